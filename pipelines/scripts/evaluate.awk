# First file: the centroids; second: validation points. Predict class 1 when it is nearer
# than class 0 by more than `margin`. Writes accuracy, per-class precision/recall, confusion.
FNR == NR { cx[$1] = $2; cy[$1] = $3; next }
{
    d0 = ($1 - cx[0]) ^ 2 + ($2 - cy[0]) ^ 2
    d1 = ($1 - cx[1]) ^ 2 + ($2 - cy[1]) ^ 2
    p = (d0 - d1 > margin) ? 1 : 0
    conf[$3, p]++; total++; if (p == $3) ok++
}
END {
    tp = conf[1, 1]; fp = conf[0, 1]; fn = conf[1, 0]; tn = conf[0, 0]
    printf "{\"accuracy\": %.4f, \"samples\": %d, ", ok / total, total
    printf "\"precision\": {\"0\": %.4f, \"1\": %.4f}, ", tn / (tn + fn + 1e-12), tp / (tp + fp + 1e-12)
    printf "\"recall\": {\"0\": %.4f, \"1\": %.4f}, ", tn / (tn + fp + 1e-12), tp / (tp + fn + 1e-12)
    printf "\"confusion\": [[%d, %d], [%d, %d]]}\n", tn, fp, fn, tp
}
