//! Pretrained weights in: PyTorch `.pt`/`.pth` (zip and the legacy pickle format, read with
//! burn-store) and safetensors.

use std::collections::HashMap;
use std::path::Path;

use super::net::WeightData;

/// Every floating-point tensor of a weights file, by name, as contiguous f32.
pub fn read_weights(path: &Path) -> Result<HashMap<String, WeightData>, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => read_safetensors(path),
        "pt" | "pth" | "bin" | "ckpt" => read_pytorch(path),
        _ => Err(format!("`{}`: unknown weights format (expected .safetensors, .pt or .pth)", path.display())),
    }
}

fn read_pytorch(path: &Path) -> Result<HashMap<String, WeightData>, String> {
    // Strides, which burn-store ignores (see `pickle.rs`); a file our small pickle reader
    // cannot follow is read as burn-store reads it.
    let layouts = super::pickle::layouts(path).unwrap_or_default();
    let r = burn_store::pytorch::PytorchReader::new(path).map_err(|e| format!("`{}` is not a PyTorch checkpoint burn-store can read: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, snap) in r.tensors() {
        let data = snap.to_data().map_err(|e| format!("`{}`: tensor `{name}`: {e:?}", path.display()))?;
        if !data.dtype.is_float() {
            continue; // num_batches_tracked and other counters
        }
        let shape = data.shape.to_vec();
        let data = data.convert::<f32>();
        let mut values = data.to_vec::<f32>().map_err(|e| format!("`{}`: tensor `{name}`: {e:?}", path.display()))?;
        if let Some(l) = layouts.get(name.as_str())
            && !l.is_contiguous()
            && l.shape == shape
        {
            values = super::pickle::reorder(&values, l).map_err(|e| format!("`{}`: tensor `{name}`: {e}", path.display()))?;
        }
        out.insert(name.clone(), WeightData { shape, data: values });
    }
    Ok(out)
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, WeightData>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("`{}` is not a safetensors file: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            safetensors::Dtype::F16 => raw.chunks_exact(2).map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            safetensors::Dtype::BF16 => raw.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect(),
            safetensors::Dtype::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
            _ => continue,
        };
        out.insert(name, WeightData { shape, data });
    }
    Ok(out)
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign << 31,
        (0, f) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            (sign << 31) | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => (sign << 31) | (0xff << 23) | (f << 13),
        (e, f) => (sign << 31) | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    #[test]
    fn half_floats() {
        assert_eq!(super::half_to_f32(0x3c00), 1.0);
        assert_eq!(super::half_to_f32(0xc000), -2.0);
        assert_eq!(super::half_to_f32(0x0001), 5.960_464_5e-8);
    }
}
