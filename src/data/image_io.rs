//! Image decoding, encoding and the resize + normalise step of the loader.

use fast_image_resize as fr;
use image::{DynamicImage, GenericImageView, ImageFormat};
use serde::{Deserialize, Serialize};

/// The encoding of an image file, sniffed from its first bytes (not its name).
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Bmp | ImageFormat::Tiff)) => Some(f),
        _ => None,
    }
}

/// Decode an image fully (a truncated file is an error here, not later in training).
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    let Some(fmt) = sniff(bytes) else {
        return Err(if bytes.is_empty() { "empty file".into() } else { "not a PNG, JPEG, BMP or TIFF image".into() });
    };
    image::load_from_memory_with_format(bytes, fmt).map_err(|e| format!("cannot decode {fmt:?} image: {e}"))
}

/// PNG bytes of an image (deterministic for a given image).
pub fn encode_png(img: &DynamicImage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png).map_err(|e| format!("cannot encode PNG: {e}"))?;
    Ok(out)
}

/// Number of channels of the decoded image (1 grey, 2 grey+alpha, 3 colour, 4 colour+alpha).
pub fn channels(img: &DynamicImage) -> u8 {
    img.color().channel_count()
}

/// What a model wants as input: size, channels and normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    /// 1 (grey) or 3 (RGB); grey sources are replicated to RGB, colour ones averaged to grey.
    pub channels: u32,
    /// Per-channel mean and std of pixel values scaled to [0, 1].
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl InputSpec {
    /// ImageNet normalisation at a given size.
    pub fn imagenet(width: u32, height: u32) -> Self {
        InputSpec { width, height, channels: 3, mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }

    pub fn plain(width: u32, height: u32, channels: u32) -> Self {
        InputSpec { width, height, channels, mean: vec![0.0; channels as usize], std: vec![1.0; channels as usize] }
    }

    pub fn len(&self) -> usize {
        (self.width * self.height * self.channels) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.width == 0 || self.height == 0 {
            return Err("input width and height must be positive".into());
        }
        if self.channels != 1 && self.channels != 3 {
            return Err(format!("input channels must be 1 or 3, not {}", self.channels));
        }
        if self.mean.len() != self.channels as usize || self.std.len() != self.channels as usize {
            return Err("mean and std need one value per channel".into());
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return Err("std values must be positive".into());
        }
        Ok(())
    }
}

/// Resize `img` to the spec (bilinear) and return its pixels as u8, channel-interleaved.
pub fn resize_u8(img: &DynamicImage, spec: &InputSpec, resizer: &mut fr::Resizer) -> Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let (buf, pt) = if spec.channels == 3 { (img.to_rgb8().into_raw(), fr::PixelType::U8x3) } else { (img.to_luma8().into_raw(), fr::PixelType::U8) };
    if (w, h) == (spec.width, spec.height) {
        return Ok(buf);
    }
    let src = fr::images::Image::from_vec_u8(w, h, buf, pt).map_err(|e| format!("bad image buffer: {e}"))?;
    let mut dst = fr::images::Image::new(spec.width, spec.height, pt);
    let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    resizer.resize(&src, &mut dst, &opts).map_err(|e| format!("cannot resize: {e}"))?;
    Ok(dst.into_vec())
}

/// Interleaved u8 pixels -> normalised planar f32 (CHW) into `out`.
pub fn normalize_into(pixels: &[u8], spec: &InputSpec, out: &mut [f32]) {
    let c = spec.channels as usize;
    let plane = (spec.width * spec.height) as usize;
    for ch in 0..c {
        let scale = 1.0 / (255.0 * spec.std[ch]);
        let shift = spec.mean[ch] / spec.std[ch];
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = pixels[i * c + ch] as f32 * scale - shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_and_normalize() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(4, 4, |x, _| image::Luma([if x < 2 { 0 } else { 255 }])));
        let spec = InputSpec { width: 8, height: 8, channels: 3, mean: vec![0.5; 3], std: vec![0.5; 3] };
        let px = resize_u8(&img, &spec, &mut fr::Resizer::new()).unwrap();
        assert_eq!(px.len(), 8 * 8 * 3);
        let mut out = vec![0f32; spec.len()];
        normalize_into(&px, &spec, &mut out);
        assert!((out[0] + 1.0).abs() < 1e-6, "black -> -1: {}", out[0]);
        assert!((out[7] - 1.0).abs() < 1e-6, "white -> 1: {}", out[7]);
    }

    #[test]
    fn sniffing() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(3, 2));
        let png = encode_png(&img).unwrap();
        assert_eq!(sniff(&png), Some(ImageFormat::Png));
        assert!(decode(&png[..png.len() / 2]).is_err(), "truncated PNG");
        assert!(decode(b"hello").unwrap_err().contains("not a PNG"));
    }
}
