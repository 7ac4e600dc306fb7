# Mean of each class: the model of a nearest-centroid classifier.
{ sx[$3] += $1; sy[$3] += $2; n[$3]++ }
END { for (c = 0; c <= 1; c++) printf "%d,%.6f,%.6f,%d\n", c, sx[c] / n[c], sy[c] / n[c], n[c] }
