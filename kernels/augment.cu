// Fused augmentation: affine warp (bilinear) + resize + hue/saturation (3x3 matrix in
// YIQ space) + contrast + brightness, one launch per batch, per-image parameters.
// Compiled at run time by NVRTC; the CPU reference is src/data/augment.rs (warp_color),
// which this must match to within one level. Arithmetic is in double, like the reference.
//
// Layout: images are RGB8 interleaved, packed back to back; offsets in bytes.
// params, PARAMS_PER_IMAGE doubles per image:
//   [0..6)   inverse affine: output pixel centre -> source coordinates
//   [6..15)  colour matrix, row-major
//   15 contrast, 16 contrast centre, 17 brightness, 18 colour identity flag (1: skip colour)

#define PARAMS_PER_IMAGE 19

extern "C" __global__ void augment_rgb(
    const unsigned char* __restrict__ src,
    const unsigned long long* __restrict__ src_off,
    const int* __restrict__ src_wh,
    unsigned char* __restrict__ dst,
    const unsigned long long* __restrict__ dst_off,
    const int* __restrict__ dst_wh,
    const double* __restrict__ params,
    int n)
{
    const int i = blockIdx.z;
    if (i >= n) return;
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int ow = dst_wh[2 * i], oh = dst_wh[2 * i + 1];
    if (x >= ow || y >= oh) return;
    const int sw = src_wh[2 * i], sh = src_wh[2 * i + 1];
    const double* p = params + (size_t)i * PARAMS_PER_IMAGE;
    const unsigned char* s = src + src_off[i];

    const double ox = x + 0.5, oy = y + 0.5;
    const double fx = p[0] * ox + p[1] * oy + p[2] - 0.5;
    const double fy = p[3] * ox + p[4] * oy + p[5] - 0.5;
    const double x0f = floor(fx), y0f = floor(fy);
    const double ax = fx - x0f, ay = fy - y0f;
    const long long x0 = (long long)x0f, y0 = (long long)y0f;

    double px[3];
    for (int c = 0; c < 3; ++c) {
        double v00 = 0.0, v10 = 0.0, v01 = 0.0, v11 = 0.0;
        if (x0 >= 0 && y0 >= 0 && x0 < sw && y0 < sh) v00 = s[((size_t)y0 * sw + x0) * 3 + c];
        if (x0 + 1 >= 0 && y0 >= 0 && x0 + 1 < sw && y0 < sh) v10 = s[((size_t)y0 * sw + x0 + 1) * 3 + c];
        if (x0 >= 0 && y0 + 1 >= 0 && x0 < sw && y0 + 1 < sh) v01 = s[((size_t)(y0 + 1) * sw + x0) * 3 + c];
        if (x0 + 1 >= 0 && y0 + 1 >= 0 && x0 + 1 < sw && y0 + 1 < sh) v11 = s[((size_t)(y0 + 1) * sw + x0 + 1) * 3 + c];
        px[c] = v00 * (1.0 - ax) * (1.0 - ay) + v10 * ax * (1.0 - ay) + v01 * (1.0 - ax) * ay + v11 * ax * ay;
    }
    double out[3];
    if (p[18] != 0.0) {
        out[0] = px[0]; out[1] = px[1]; out[2] = px[2];
    } else {
        for (int c = 0; c < 3; ++c) {
            const double m = p[6 + 3 * c] * px[0] + p[7 + 3 * c] * px[1] + p[8 + 3 * c] * px[2];
            out[c] = (m - p[16]) * p[15] + p[16] + p[17];
        }
    }
    unsigned char* d = dst + dst_off[i] + ((size_t)y * ow + x) * 3;
    for (int c = 0; c < 3; ++c) {
        double v = round(out[c]);
        v = v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v);
        d[c] = (unsigned char)v;
    }
}
