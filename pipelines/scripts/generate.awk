# n points of two classes, class c centred at (c*sep, c*sep), unit variance (Box-Muller).
BEGIN {
    srand(seed)
    for (i = 0; i < n; i++) {
        c = i % 2
        u1 = rand(); u2 = rand(); if (u1 < 1e-12) u1 = 1e-12
        r = sqrt(-2 * log(u1))
        x = c * sep + r * cos(6.283185307179586 * u2)
        y = c * sep + r * sin(6.283185307179586 * u2)
        printf "%.6f,%.6f,%d\n", x, y, c
    }
}
