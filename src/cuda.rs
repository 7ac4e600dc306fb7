//! Our CUDA kernels: sources in `kernels/*.cu`, embedded in the binary, compiled at run time
//! with NVRTC through cudarc (loaded dynamically: no CUDA toolkit at build time), PTX cached
//! by kernel hash, GPU architecture and NVRTC version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};
use image::RgbImage;

use crate::data::augment::{color_matrix, forward_matrix, Draw};

pub const AUGMENT_SRC: &str = include_str!("../kernels/augment.cu");
pub const DEPTHWISE_SRC: &str = include_str!("../kernels/depthwise.cu");
/// The depthwise kernels' entry points, in the order the torch engine's shim indexes them:
/// dtype (f32, bf16) × variant (16-byte vectors, scalar) × (forward, input grad, weight grad).
pub const DEPTHWISE_KERNELS: [&str; 24] = [
    "dw_fwd_f32_v", "dw_dgrad_f32_v", "dw_wgrad_f32_v", "dw_fwd_f32_s", "dw_dgrad_f32_s", "dw_wgrad_f32_s",
    "dw_fwd_bf16_v", "dw_dgrad_bf16_v", "dw_wgrad_bf16_v", "dw_fwd_bf16_s", "dw_dgrad_bf16_s", "dw_wgrad_bf16_s",
    // 3x3, stride 1 and 2, strips of 4 columns (vectorised)
    "dw_fwd3s1_f32_v", "dw_dgrad3s1_f32_v", "dw_wgrad3s1_f32_v", "dw_fwd3s2_f32_v", "dw_dgrad3s2_f32_v", "dw_wgrad3s2_f32_v",
    "dw_fwd3s1_bf16_v", "dw_dgrad3s1_bf16_v", "dw_wgrad3s1_bf16_v", "dw_fwd3s2_bf16_v", "dw_dgrad3s2_bf16_v", "dw_wgrad3s2_bf16_v",
];
const PARAMS_PER_IMAGE: usize = 19;

/// Is a CUDA driver library present (a GPU machine)?
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Is libnvrtc loadable (for compiling kernels)?
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compile a kernel to PTX for `arch` (e.g. `compute_90`), using `cache` when given.
/// Errors carry NVRTC's log.
pub fn compile(src: &str, arch: &'static str, cache: Option<&Path>) -> Result<(Ptx, bool), String> {
    if !nvrtc_present() {
        return Err("libnvrtc was not found (set LD_LIBRARY_PATH to the folder holding libnvrtc.so, e.g. /usr/local/cuda/lib64)".into());
    }
    let (mut maj, mut min) = (0i32, 0i32);
    // SAFETY: plain out-parameters.
    unsafe {
        cudarc::nvrtc::sys::nvrtcVersion(&mut maj, &mut min);
    }
    let key = blake3::hash(format!("{src}\0{arch}\0nvrtc-{maj}.{min}").as_bytes()).to_hex().to_string();
    let path: Option<PathBuf> = cache.map(|c| c.join(format!("{}-{arch}.ptx", &key[..32])));
    if let Some(p) = &path
        && let Ok(text) = std::fs::read_to_string(p)
    {
        return Ok((Ptx::from_src(text), true));
    }
    let opts = CompileOptions { arch: Some(arch), name: Some("taoflow_kernel.cu".into()), ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => format!("NVRTC could not compile the kernel:\n{}", log.to_string_lossy()),
        other => format!("NVRTC could not compile the kernel: {other:?}"),
    })?;
    if let Some(p) = &path {
        let _ = crate::store::write_atomic(p, ptx.to_src().as_bytes());
    }
    Ok((ptx, false))
}

/// The depthwise-convolution kernels (kernels/depthwise.cu), loaded in a GPU's primary
/// context (the one libtorch uses), for the torch engine to launch.
pub struct DepthwiseKernels {
    ctx: Arc<CudaContext>,
    funcs: Vec<CudaFunction>,
    pub sms: i32,
    pub cached_ptx: bool,
}

impl DepthwiseKernels {
    pub fn load(ordinal: usize, cache: Option<&Path>) -> Result<Self, String> {
        let (ctx, module, _, cached_ptx) = open_module(ordinal, DEPTHWISE_SRC, cache, "the depthwise kernels")?;
        let funcs = DEPTHWISE_KERNELS.iter().map(|n| module.load_function(n).map_err(|e| format!("{n}: {e:?}"))).collect::<Result<Vec<_>, _>>()?;
        let sms = ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(|e| format!("{e:?}"))?;
        Ok(DepthwiseKernels { ctx, funcs, sms, cached_ptx })
    }

    /// The raw context and function handles (valid while `self` lives).
    pub fn raw(&self) -> (*mut std::ffi::c_void, Vec<*mut std::ffi::c_void>) {
        (self.ctx.cu_ctx() as *mut _, self.funcs.iter().map(|f| f.cu_function() as *mut _).collect())
    }
}

/// The augment kernel, loaded on one GPU.
pub struct AugmentKernel {
    stream: Arc<CudaStream>,
    func: CudaFunction,
    pub device_name: String,
    pub arch: &'static str,
    pub cached_ptx: bool,
}

/// A batch packed for the kernel.
struct Packed {
    src: Vec<u8>,
    src_off: Vec<u64>,
    src_wh: Vec<i32>,
    dst_off: Vec<u64>,
    dst_wh: Vec<i32>,
    params: Vec<f64>,
    total_out: u64,
    maxw: u32,
    maxh: u32,
    sizes: Vec<(u32, u32)>,
}

struct Device {
    src: cudarc::driver::CudaSlice<u8>,
    src_off: cudarc::driver::CudaSlice<u64>,
    src_wh: cudarc::driver::CudaSlice<i32>,
    dst_off: cudarc::driver::CudaSlice<u64>,
    dst_wh: cudarc::driver::CudaSlice<i32>,
    params: cudarc::driver::CudaSlice<f64>,
    dst: cudarc::driver::CudaSlice<u8>,
}

fn pack(jobs: &[(&RgbImage, Draw, (u32, u32))]) -> Packed {
    let mut p = Packed { src: Vec::new(), src_off: Vec::new(), src_wh: Vec::new(), dst_off: Vec::new(), dst_wh: Vec::new(), params: Vec::new(), total_out: 0, maxw: 0, maxh: 0, sizes: Vec::new() };
    // Identical sources (copies of one sample) are uploaded once.
    let mut seen: Vec<(*const u8, u64)> = Vec::new();
    for (img, d, out) in jobs {
        let ptr = img.as_raw().as_ptr();
        let off = match seen.iter().find(|(q, _)| *q == ptr) {
            Some((_, o)) => *o,
            None => {
                let o = p.src.len() as u64;
                p.src.extend_from_slice(img.as_raw());
                seen.push((ptr, o));
                o
            }
        };
        p.src_off.push(off);
        p.src_wh.extend([img.width() as i32, img.height() as i32]);
        p.dst_off.push(p.total_out);
        p.dst_wh.extend([out.0 as i32, out.1 as i32]);
        p.total_out += out.0 as u64 * out.1 as u64 * 3;
        p.maxw = p.maxw.max(out.0);
        p.maxh = p.maxh.max(out.1);
        p.sizes.push(*out);
        let inv = forward_matrix(d, img.dimensions(), *out).invert().map(|a| a.0).unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        p.params.extend(inv);
        let cm = color_matrix(d.hue, d.saturation);
        p.params.extend(cm.iter().flatten());
        p.params.extend([d.contrast, d.contrast_center, d.brightness, if d.color_is_identity() { 1.0 } else { 0.0 }]);
    }
    debug_assert_eq!(p.params.len(), jobs.len() * PARAMS_PER_IMAGE);
    p
}

/// GPU `ordinal`'s primary context with `src` compiled for its architecture (PTX cached in
/// `cache`) and loaded: the context, the module, the architecture and whether the PTX came
/// from the cache. `what` names the kernels in errors.
fn open_module(ordinal: usize, src: &str, cache: Option<&Path>, what: &str) -> Result<(Arc<CudaContext>, Arc<cudarc::driver::CudaModule>, &'static str, bool), String> {
    if !driver_present() {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e:?}"))?;
    let (maj, min) = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
    let arch = arch_name(maj, min);
    let (ptx, cached_ptx) = compile(src, arch, cache)?;
    let module = ctx.load_module(ptx).map_err(|e| format!("cannot load {what}: {e:?}"))?;
    Ok((ctx, module, arch, cached_ptx))
}

/// `compute_XY` for a compute capability (leaked once per distinct value).
fn arch_name(maj: i32, min: i32) -> &'static str {
    Box::leak(format!("compute_{maj}{min}").into_boxed_str())
}

impl AugmentKernel {
    pub fn new(ordinal: usize, cache: Option<&Path>) -> Result<Self, String> {
        let (ctx, module, arch, cached_ptx) = open_module(ordinal, AUGMENT_SRC, cache, "the augment kernel")?;
        let func = module.load_function("augment_rgb").map_err(|e| format!("{e:?}"))?;
        let device_name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        Ok(AugmentKernel { stream: ctx.default_stream(), func, device_name, arch, cached_ptx })
    }

    /// Warp + colour a batch in one launch. Each job: source image, draw, output size.
    pub fn warp_color(&self, jobs: &[(&RgbImage, Draw, (u32, u32))]) -> Result<Vec<RgbImage>, String> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let packed = pack(jobs);
        let mut dev = self.upload(&packed)?;
        self.launch(&packed, &mut dev)?;
        self.download(&packed, &dev)
    }

    /// Timings of one batch: (upload, kernel, download) in milliseconds, the kernel averaged
    /// over `iters` launches.
    pub fn bench(&self, jobs: &[(&RgbImage, Draw, (u32, u32))], iters: usize) -> Result<(f64, f64, f64), String> {
        let packed = pack(jobs);
        self.synchronize()?;
        let t = std::time::Instant::now();
        let mut dev = self.upload(&packed)?;
        self.synchronize()?;
        let up = t.elapsed().as_secs_f64() * 1e3;
        self.launch(&packed, &mut dev)?;
        self.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            self.launch(&packed, &mut dev)?;
        }
        self.synchronize()?;
        let k = t.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64;
        let t = std::time::Instant::now();
        let _ = self.download(&packed, &dev)?;
        let down = t.elapsed().as_secs_f64() * 1e3;
        Ok((up, k, down))
    }

    fn upload(&self, p: &Packed) -> Result<Device, String> {
        let e = |x: cudarc::driver::DriverError| format!("CUDA: {x:?}");
        let s = &self.stream;
        Ok(Device {
            src: s.clone_htod(&p.src).map_err(e)?,
            src_off: s.clone_htod(&p.src_off).map_err(e)?,
            src_wh: s.clone_htod(&p.src_wh).map_err(e)?,
            dst_off: s.clone_htod(&p.dst_off).map_err(e)?,
            dst_wh: s.clone_htod(&p.dst_wh).map_err(e)?,
            params: s.clone_htod(&p.params).map_err(e)?,
            dst: s.alloc_zeros::<u8>(p.total_out as usize).map_err(e)?,
        })
    }

    fn launch(&self, p: &Packed, d: &mut Device) -> Result<(), String> {
        let n = p.sizes.len() as i32;
        let cfg = LaunchConfig { grid_dim: (p.maxw.div_ceil(32), p.maxh.div_ceil(8), p.sizes.len() as u32), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(&self.func);
        b.arg(&d.src).arg(&d.src_off).arg(&d.src_wh).arg(&mut d.dst).arg(&d.dst_off).arg(&d.dst_wh).arg(&d.params).arg(&n);
        // SAFETY: the argument list matches the kernel's signature in kernels/augment.cu,
        // and every buffer holds what the offsets and sizes in `p` say.
        unsafe { b.launch(cfg) }.map_err(|x| format!("CUDA launch: {x:?}"))?;
        Ok(())
    }

    fn download(&self, p: &Packed, d: &Device) -> Result<Vec<RgbImage>, String> {
        // One copy per image straight into its own buffer (no second host copy).
        let mut out = Vec::with_capacity(p.sizes.len());
        for (i, sz) in p.sizes.iter().enumerate() {
            let o = p.dst_off[i] as usize;
            let len = (sz.0 * sz.1 * 3) as usize;
            let mut buf = vec![0u8; len];
            self.stream.memcpy_dtoh(&d.dst.slice(o..o + len), &mut buf).map_err(|x| format!("CUDA: {x:?}"))?;
            out.push(RgbImage::from_raw(sz.0, sz.1, buf).ok_or("bad output size")?);
        }
        self.synchronize()?;
        Ok(out)
    }

    /// Wait for all work on the stream (for timing).
    pub fn synchronize(&self) -> Result<(), String> {
        self.stream.synchronize().map_err(|e| format!("{e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kernels/depthwise.cu compiled as plain C++ and run on the CPU
    /// (kernels/host/depthwise_check.cpp), against a reference convolution: the index
    /// arithmetic of every depthwise kernel (strip edges, stride phases, padding) checked
    /// without a GPU. The GPU test `depthwise_kernels_match_cudnn` checks the same kernels
    /// against cuDNN on the device.
    #[test]
    fn depthwise_kernels_match_reference_on_the_host() {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("depthwise_check");
        let built = std::process::Command::new(&cxx)
            .args(["-O2", "-std=c++20", "-pthread", "-Wall", "-Wno-unknown-pragmas", "-Werror", "-o"])
            .arg(&exe)
            .arg(root.join("kernels/host/depthwise_check.cpp"))
            .output();
        let built = match built {
            Ok(o) => o,
            Err(e) => {
                assert!(std::env::var_os("TAOFLOW_REQUIRE_CXX").is_none(), "no C++ compiler `{cxx}`: {e}");
                eprintln!("skipping: no C++ compiler `{cxx}` ({e})");
                return;
            }
        };
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
        let run = std::process::Command::new(&exe).output().unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success() && out.contains(" 0 failures"), "{out}{}", String::from_utf8_lossy(&run.stderr));
        let n: usize = out.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0);
        assert!(n >= 100, "the check ran {n} geometries: {out}");
    }

    /// Compiles the kernel with NVRTC when libnvrtc is present (CI installs NVIDIA's NVRTC
    /// wheel; `scripts/test.sh` sets TAOFLOW_REQUIRE_NVRTC=1 so that a missing library fails).
    #[test]
    fn kernels_compile_with_nvrtc() {
        if !nvrtc_present() {
            assert!(std::env::var_os("TAOFLOW_REQUIRE_NVRTC").is_none(), "libnvrtc is required (scripts/test.sh installs it); LD_LIBRARY_PATH={:?}", std::env::var("LD_LIBRARY_PATH"));
            eprintln!("skipping: libnvrtc not found");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (ptx, cached) = compile(AUGMENT_SRC, "compute_90", Some(dir.path())).unwrap();
        assert!(!cached);
        let text = ptx.to_src();
        assert!(text.contains(".entry augment_rgb"), "{}", &text[..text.len().min(400)]);
        let (_, cached) = compile(AUGMENT_SRC, "compute_90", Some(dir.path())).unwrap();
        assert!(cached, "second compile comes from the PTX cache");
        let (ptx, _) = compile(DEPTHWISE_SRC, "compute_90", None).unwrap();
        let text = ptx.to_src();
        for k in DEPTHWISE_KERNELS {
            assert!(text.contains(&format!(".entry {k}(")), "{k} missing from the depthwise PTX");
        }
        assert!(!text.contains(".local"), "the depthwise kernels spill to local memory");
        let err = compile("extern \"C\" __global__ void k() { undefined_thing(); }", "compute_90", None).unwrap_err();
        assert!(err.contains("undefined_thing"), "the NVRTC log names the problem: {err}");
    }
}
