//! The GPU training engine (feature `torch`): the layer graph interpreted with libtorch
//! through tch — cuDNN convolutions and batch norms, cuBLAS linears, PyTorch's autograd,
//! its fused Adam/AdamW/SGD kernels, channels-last layout and bf16 autocast — the same
//! kernels PyTorch runs, without Python. docs/gpu.md has the measurements that chose it
//! over Burn's CUDA backend. The Burn engine on the CPU stays the reference: tests check
//! that both give the same forward pass, gradients step and loss curve.
//!
//! The build links only libtorch's CPU part; `Runtime::cuda` loads `libtorch_cuda.so` from
//! the machine's PyTorch installation at run time.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};

use tch::{Device, Kind, Tensor};

use super::graph::{ModelGraph, Op};
use super::net::WeightData;
use super::optim::{OptimConfig, OptimKind};
use super::train::{Engine, StepDone, TrainConfig};
use crate::data::loader::Batch;
use crate::tasks::detection::train::DetectionCost;

mod ffi {
    use super::c_char;
    use tch::Tensor as T;
    // Tensors cross as `at::Tensor*`, what tch's C_tensor points to.
    type P = *mut std::ffi::c_void;
    unsafe extern "C" {
        pub fn tf_free(s: *mut c_char);
        pub fn tf_fused_adam(p: *const P, g: *const P, m: *const P, v: *const P, steps: *const P, n: usize, lr: f64, beta1: f64, beta2: f64, wd: f64, eps: f64, decoupled: i32) -> *mut c_char;
        pub fn tf_fused_sgd(p: *const P, g: *const P, bufs: *const P, n: usize, n_bufs: usize, wd: f64, momentum: f64, lr: f64, nesterov: i32, first_step: i32) -> *mut c_char;
        pub fn tf_add_l1(p: *const P, g: *const P, n: usize, l1: f64) -> *mut c_char;
        pub fn tf_grads_to_none(p: *const P, n: usize) -> *mut c_char;
        pub fn tf_channels_last(t: P, out: *mut P) -> *mut c_char;
        pub fn tf_pin_memory(t: P, out: *mut P) -> *mut c_char;
        pub fn tf_autocast(enabled: i32, bf16: i32) -> *mut c_char;
        pub fn tf_dw_register(device: i32, ctx: P, funcs: *const P, sms: i32) -> *mut c_char;
        pub fn tf_dw_conv(x: P, w: P, sh: i64, sw: i64, ph: i64, pw: i64, out: *mut P) -> *mut c_char;
        pub fn tf_dw_conv_infer(x: P, w: P, scale: P, shift: P, lo: f64, hi: f64, act: i32, sh: i64, sw: i64, ph: i64, pw: i64, out: *mut P) -> *mut c_char;
        pub fn tf_set_math(tf32_matmul: i32, tf32_cudnn: i32, cudnn_benchmark: i32) -> *mut c_char;
    }
    pub fn ptr(t: &T) -> P {
        t.as_ptr() as P
    }
}

fn check(e: *mut c_char) -> Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a strdup'ed C string or null.
    let s = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { ffi::tf_free(e) };
    Err(format!("libtorch: {s}"))
}

fn ptrs(ts: &[&Tensor]) -> Vec<*mut std::ffi::c_void> {
    ts.iter().map(|t| ffi::ptr(t)).collect()
}

trait Ck<T> {
    fn ck(self) -> Result<T, String>;
}
impl<T> Ck<T> for Result<T, tch::TchError> {
    fn ck(self) -> Result<T, String> {
        self.map_err(|e| {
            let s = e.to_string();
            // libtorch appends a C++ backtrace; the first lines say what went wrong.
            let short: String = s.lines().take_while(|l| !l.starts_with("Exception raised from")).take(6).collect::<Vec<_>>().join("\n");
            format!("libtorch: {short}")
        })
    }
}

/// Numeric precision of training and inference on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// IEEE f32 everywhere (TF32 off).
    Fp32,
    /// f32 tensors, TF32 tensor-core math in convolutions and matmuls (PyTorch's default for
    /// cuDNN convolutions).
    Tf32,
    /// bf16 autocast: convolutions and matmuls in bf16, weights, batch-norm statistics,
    /// loss and optimizer in f32 (torch.autocast(dtype=torch.bfloat16)).
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fp32" => Some(Precision::Fp32),
            "tf32" => Some(Precision::Tf32),
            "bf16" => Some(Precision::Bf16),
            _ => None,
        }
    }
}

/// Where the engine runs.
pub struct Runtime {
    pub device: Device,
}

static CUDA_LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// Load libtorch's CUDA half, once: from `$TAOFLOW_LIBTORCH/lib` (the libtorch the
/// `taoflow` launcher chose and checked, crate::runtime) and nowhere else when it is set;
/// else by name (LD_LIBRARY_PATH). Its static initialisers register the CUDA backend.
fn load_cuda() -> Result<(), String> {
    CUDA_LOADED
        .get_or_init(|| {
            let mut tried = Vec::new();
            let mut candidates = Vec::new();
            let chosen = std::env::var_os("TAOFLOW_LIBTORCH").filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
            match &chosen {
                Some(dir) => {
                    let lib = if dir.join("lib").is_dir() { dir.join("lib") } else { dir.clone() };
                    if !lib.join("libtorch_cuda.so").is_file() {
                        let origin = std::env::var("TAOFLOW_LIBTORCH_ORIGIN").map(|o| format!(", from {o}")).unwrap_or_default();
                        return Err(format!(
                            "the libtorch in use ({}{origin}) is CPU only: it has no libtorch_cuda.so\n  = hint: install the GPU runtime: {}   (`taoflow doctor` shows what was found)",
                            dir.display(),
                            crate::runtime::setup_command()
                        ));
                    }
                    candidates.push(lib.join("libtorch_cuda.so").display().to_string());
                }
                None => candidates.push("libtorch_cuda.so".into()),
            }
            for c in candidates {
                let name = CString::new(c.clone()).map_err(|e| e.to_string())?;
                // SAFETY: dlopen with a valid C string; the handle is kept for the process.
                let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
                if !h.is_null() {
                    return Ok(());
                }
                // SAFETY: dlerror returns a thread-local C string or null.
                let e = unsafe { libc::dlerror() };
                let msg = if e.is_null() { "unknown error".to_string() } else { unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned() };
                tried.push(format!("{c}: {msg}"));
            }
            Err(format!(
                "cannot load PyTorch's CUDA library (libtorch_cuda.so):\n    {}\n  = hint: install the GPU runtime: {}   (`taoflow doctor` shows what was found)",
                tried.join("\n    "),
                crate::runtime::setup_command()
            ))
        })
        .clone()
}

/// `taoflow doctor`'s look from inside the engine: does libtorch's CUDA half load, how many
/// CUDA devices does libtorch see, is cuDNN available to it.
pub fn probe() -> crate::runtime::TorchProbe {
    let cuda = load_cuda();
    let (devices, cudnn) = if cuda.is_ok() { (tch::Cuda::device_count(), tch::Cuda::cudnn_is_available()) } else { (0, false) };
    crate::runtime::TorchProbe { cuda, devices, cudnn }
}

/// GPUs whose depthwise kernels are registered with the shim. The kernels stay loaded for
/// the process (the shim holds their handles).
static DW_REGISTERED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// How depthwise convolutions run on a GPU: `TAOFLOW_DEPTHWISE` = `auto` (the default: our
/// kernels, and cuDNN for the training batches once the work left pays for cuDNN's
/// compilation, see [`TorchEngine`]), `ours` (our kernels only) or `cudnn` (cuDNN only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthwisePolicy {
    Auto,
    Ours,
    Cudnn,
}

impl DepthwisePolicy {
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("TAOFLOW_DEPTHWISE").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(DepthwisePolicy::Auto),
            Ok("ours") => Ok(DepthwisePolicy::Ours),
            Ok("cudnn") => Ok(DepthwisePolicy::Cudnn),
            Ok(other) => Err(format!("TAOFLOW_DEPTHWISE=`{other}` is not one of auto, ours, cudnn")),
        }
    }
}

/// Are our depthwise kernels registered for GPU `index`?
fn depthwise_registered(index: usize) -> bool {
    DW_REGISTERED.lock().map(|d| d.contains(&index)).unwrap_or(false)
}

/// Load kernels/depthwise.cu on GPU `index` and hand it to the shim, once per process
/// (not at all under `TAOFLOW_DEPTHWISE=cudnn`).
fn register_depthwise(index: usize, cache: Option<&std::path::Path>) -> Result<(), String> {
    if DepthwisePolicy::from_env()? == DepthwisePolicy::Cudnn {
        return Ok(());
    }
    let mut done = DW_REGISTERED.lock().map_err(|_| "poisoned lock")?;
    if done.contains(&index) {
        return Ok(());
    }
    let k = crate::cuda::DepthwiseKernels::load(index, cache)?;
    let (ctx, funcs) = k.raw();
    check(unsafe { ffi::tf_dw_register(index as i32, ctx, funcs.as_ptr(), k.sms) })?;
    // The shim launches these handles from now on: keep the module loaded.
    std::mem::forget(k);
    done.push(index);
    Ok(())
}


impl Runtime {
    /// CUDA device `index`, with libtorch's CUDA half loaded, the precision's math mode set
    /// and our depthwise-convolution kernels loaded (their PTX cached in `kernel_cache`,
    /// the store's `kernels-v1/`, when given). Where the kernels cannot be had (no NVRTC),
    /// depthwise convolutions run on cuDNN, after a warning.
    pub fn cuda(index: usize, precision: Precision, kernel_cache: Option<&std::path::Path>) -> Result<Self, String> {
        load_cuda()?;
        if !tch::Cuda::is_available() {
            return Err("libtorch sees no CUDA device (is the NVIDIA driver loaded? `nvidia-smi` tells)".into());
        }
        let n = tch::Cuda::device_count() as usize;
        if index >= n {
            return Err(format!("cuda:{index} does not exist: libtorch sees {n} CUDA device(s)"));
        }
        let tf32 = precision != Precision::Fp32;
        check(unsafe { ffi::tf_set_math(tf32 as i32, tf32 as i32, 0) })?;
        if let Err(e) = register_depthwise(index, kernel_cache) {
            eprintln!("warning: depthwise convolutions run on cuDNN (slower to start): {e}");
        }
        Ok(Runtime { device: Device::Cuda(index) })
    }

    /// libtorch on the CPU: what the tests use to check this engine against Burn. Loads the
    /// CUDA half too where there is one: libtorch decides once, at its first use, whether
    /// CUDA exists, so a CPU run before `cuda` would hide every GPU from the rest of the
    /// process.
    pub fn cpu() -> Self {
        let _ = load_cuda();
        Runtime { device: Device::Cpu }
    }
}

#[derive(Debug, Clone)]
enum LOp {
    Conv { w: usize, b: Option<usize>, stride: [i64; 2], pad: [i64; 4], groups: i64 },
    Bn { w: usize, b: usize, bn: usize, eps: f64, frozen: bool },
    Relu,
    Relu6,
    MaxPool { kernel: [i64; 2], stride: [i64; 2], pad: [i64; 2] },
    Gap,
    Linear { w: usize, b: Option<usize> },
    Dropout(f64),
    Add,
    Sigmoid,
}

struct Param {
    name: String,
    t: Tensor,
    /// A conv/linear kernel: weight decay and L1 act on it.
    kernel: bool,
    trainable: bool,
}

/// The layer graph over libtorch tensors.
pub struct TorchNet {
    steps: Vec<(LOp, Vec<usize>)>,
    /// Value indices of the graph's outputs.
    outputs: Vec<usize>,
    params: Vec<Param>,
    /// Running mean and variance per batch norm, with its weight-name prefix.
    running: Vec<(String, Tensor, Tensor)>,
    device: Device,
    channels_last: bool,
    input: [i64; 3],
    /// The parameters' element type: f32, or f64 for reference runs ([`TorchNet::into_double`]).
    dtype: Kind,
    /// Training batches of this size run their depthwise convolutions on cuDNN rather than
    /// our kernels (set by the engine's [`DepthwisePolicy::Auto`]).
    cudnn_dw_batch: Option<i64>,
    /// Inference fuses an eval-mode batch norm and a following ReLU/ReLU6 into our depthwise
    /// forward kernel (one pass over the activation instead of three). On by default; off
    /// for the tests that compare the two.
    pub fuse_depthwise: bool,
}

fn tensor_of(d: &WeightData, device: Device) -> Result<Tensor, String> {
    let shape: Vec<i64> = d.shape.iter().map(|&s| s as i64).collect();
    Tensor::f_from_slice(&d.data).ck()?.f_reshape(&shape).ck()?.f_to_device(device).ck()
}

pub fn to_channels_last(t: &Tensor) -> Result<Tensor, String> {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    check(unsafe { ffi::tf_channels_last(ffi::ptr(t), &mut out) })?;
    // SAFETY: the shim returns a heap-allocated at::Tensor, owned from here on.
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// A copy in page-locked memory, from which a host-to-device copy runs asynchronously.
fn pinned(t: &Tensor) -> Result<Tensor, String> {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    check(unsafe { ffi::tf_pin_memory(ffi::ptr(t), &mut out) })?;
    // SAFETY: as above.
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// A depthwise convolution on our kernels (kernels/depthwise.cu), when they are loaded for
/// the tensor's GPU and apply to it (see `tf_dw_conv` in shim.cpp); `None`: run libtorch's.
/// `pad` is [top, left, bottom, right]. Public for the benchmarks.
pub fn depthwise(x: &Tensor, w: &Tensor, stride: [i64; 2], pad: [i64; 4]) -> Result<Option<Tensor>, String> {
    let (padded, padding) = pad_input(x, pad)?;
    depthwise_padded(padded.as_ref().unwrap_or(x), w, stride, padding)
}

/// A convolution's padding [top, left, bottom, right] as libtorch's convolutions take it:
/// symmetric padding is passed on (`[top, left]`, no copy); asymmetric padding is applied
/// to a copy of `x`, returned, and the convolution pads no more.
fn pad_input(x: &Tensor, pad: [i64; 4]) -> Result<(Option<Tensor>, [i64; 2]), String> {
    let [t, l, b, r] = pad;
    if t == b && l == r { Ok((None, [t, l])) } else { Ok((Some(x.f_constant_pad_nd([l, r, t, b]).ck()?), [0, 0])) }
}

/// A step has read `ins`: each value's readers drop by one, and a value nobody reads any
/// more is freed (as PyTorch's eager modules free activations).
fn release(ins: &[usize], readers: &mut [usize], vals: &mut [Option<Tensor>]) {
    for &i in ins {
        readers[i] -= 1;
        if readers[i] == 0 {
            vals[i] = None;
        }
    }
}

/// Tensors that inference reuses from call to call while the weights stay the same
/// ([`TorchNet::infer_cache`]); the engine drops it at every step and restore.
struct InferCache {
    /// bf16 copies of the kernels (bf16 inference), by parameter index.
    kernels: Option<Vec<Option<Tensor>>>,
    /// Fused depthwise layers' batch norms as f32 scale and shift, by the convolution's step.
    dw_bn: HashMap<usize, (Tensor, Tensor)>,
}

thread_local! {
    /// Depthwise convolutions run with their batch norm (and activation) fused, on this
    /// thread: the tests check that the fused path runs.
    static DW_FUSED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Inference: a depthwise convolution, then an eval-mode batch norm folded to f32 `[C]`
/// `scale` and `shift`, then `act` (a clamp to [lo, hi]) in one kernel. `None` where our
/// kernels do not apply (or autograd records).
fn depthwise_infer(x: &Tensor, w: &Tensor, scale: &Tensor, shift: &Tensor, act: Option<(f64, f64)>, stride: [i64; 2], padding: [i64; 2]) -> Result<Option<Tensor>, String> {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    let (lo, hi) = act.unwrap_or((0.0, 0.0));
    check(unsafe { ffi::tf_dw_conv_infer(ffi::ptr(x), ffi::ptr(w), ffi::ptr(scale), ffi::ptr(shift), lo, hi, act.is_some() as i32, stride[0], stride[1], padding[0], padding[1], &mut out) })?;
    // SAFETY: a non-null result is a heap-allocated at::Tensor, owned from here on.
    Ok((!out.is_null()).then(|| unsafe { Tensor::from_ptr(out as *mut _) }))
}

/// [`depthwise`] with symmetric `padding` [h, w].
fn depthwise_padded(x: &Tensor, w: &Tensor, stride: [i64; 2], padding: [i64; 2]) -> Result<Option<Tensor>, String> {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    check(unsafe { ffi::tf_dw_conv(ffi::ptr(x), ffi::ptr(w), stride[0], stride[1], padding[0], padding[1], &mut out) })?;
    // SAFETY: a non-null result is a heap-allocated at::Tensor, owned from here on.
    Ok((!out.is_null()).then(|| unsafe { Tensor::from_ptr(out as *mut _) }))
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>, String> {
    let flat = t.f_to_kind(Kind::Float).ck()?.f_to_device(Device::Cpu).ck()?.f_contiguous().ck()?.f_reshape([-1]).ck()?;
    Vec::<f32>::try_from(&flat).map_err(|e| e.to_string())
}

impl TorchNet {
    /// The graph with `weights` (every tensor the graph names) on `rt`'s device. Layers
    /// for which `frozen` holds get no gradient, and their batch norms use running
    /// statistics while training, as in the Burn engine.
    pub fn new(graph: &ModelGraph, weights: &HashMap<String, WeightData>, frozen: &dyn Fn(&str) -> bool, rt: &Runtime) -> Result<Self, String> {
        graph.validate()?;
        let device = rt.device;
        let channels_last = device != Device::Cpu;
        let mut index: HashMap<&str, usize> = HashMap::new();
        index.insert("input", 0);
        let mut params = Vec::new();
        let mut running = Vec::new();
        let mut add_param = |name: String, kernel: bool, trainable: bool, conv: bool| -> Result<usize, String> {
            let d = weights.get(&name).ok_or_else(|| format!("no weight `{name}`"))?;
            let mut t = tensor_of(d, device)?;
            if conv && channels_last {
                t = to_channels_last(&t)?;
            }
            let t = t.f_set_requires_grad(trainable).ck()?;
            params.push(Param { name, t, kernel, trainable });
            Ok(params.len() - 1)
        };
        let mut steps = Vec::new();
        for (i, l) in graph.layers.iter().enumerate() {
            let ins: Vec<usize> = l.inputs.iter().map(|n| index.get(n.as_str()).copied().ok_or_else(|| format!("layer `{}` reads unknown `{n}`", l.name))).collect::<Result<_, _>>()?;
            let fz = frozen(&l.name);
            let n = &l.name;
            let op = match &l.op {
                Op::Conv2d { stride, padding, groups, bias, .. } => LOp::Conv {
                    w: add_param(format!("{n}.weight"), true, !fz, true)?,
                    b: if *bias { Some(add_param(format!("{n}.bias"), false, !fz, false)?) } else { None },
                    stride: [stride[0] as i64, stride[1] as i64],
                    pad: [padding[0] as i64, padding[1] as i64, padding[2] as i64, padding[3] as i64],
                    groups: *groups as i64,
                },
                Op::BatchNorm { eps, .. } => {
                    let w = add_param(format!("{n}.weight"), false, !fz, false)?;
                    let b = add_param(format!("{n}.bias"), false, !fz, false)?;
                    let rm = weights.get(&format!("{n}.running_mean")).ok_or_else(|| format!("no weight `{n}.running_mean`"))?;
                    let rv = weights.get(&format!("{n}.running_var")).ok_or_else(|| format!("no weight `{n}.running_var`"))?;
                    running.push((n.clone(), tensor_of(rm, device)?, tensor_of(rv, device)?));
                    LOp::Bn { w, b, bn: running.len() - 1, eps: *eps, frozen: fz }
                }
                Op::Relu => LOp::Relu,
                Op::Relu6 => LOp::Relu6,
                Op::MaxPool { kernel, stride, padding } => LOp::MaxPool {
                    kernel: [kernel[0] as i64, kernel[1] as i64],
                    stride: [stride[0] as i64, stride[1] as i64],
                    pad: [padding[0] as i64, padding[1] as i64],
                },
                Op::GlobalAvgPool => LOp::Gap,
                Op::Linear { bias, .. } => LOp::Linear {
                    w: add_param(format!("{n}.weight"), true, !fz, false)?,
                    b: if *bias { Some(add_param(format!("{n}.bias"), false, !fz, false)?) } else { None },
                },
                Op::Dropout { p } => LOp::Dropout(*p),
                Op::Add => LOp::Add,
                Op::Sigmoid => LOp::Sigmoid,
            };
            steps.push((op, ins));
            index.insert(&l.name, i + 1);
        }
        let outputs = graph.outputs.iter().map(|o| index.get(o.as_str()).copied().ok_or_else(|| format!("output `{o}` is not a layer"))).collect::<Result<Vec<_>, _>>()?;
        let s = &graph.input;
        Ok(TorchNet { steps, outputs, params, running, device, channels_last, input: [s.channels as i64, s.height as i64, s.width as i64], dtype: Kind::Float, cudnn_dw_batch: None, fuse_depthwise: true })
    }

    /// Distinct depthwise convolutions (channels, kernel, stride): what cuDNN compiles
    /// separately for each batch size.
    fn depthwise_kinds(&self) -> usize {
        let mut kinds: Vec<(i64, Vec<i64>, [i64; 2])> = Vec::new();
        for (op, _) in &self.steps {
            if let LOp::Conv { w, stride, groups, .. } = op
                && *groups > 1
            {
                let k = (*groups, self.params[*w].t.size(), *stride);
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
        }
        kinds.len()
    }

    /// The same network in f64 (parameters, running statistics, activations, logits and
    /// loss): a reference without f32 rounding, which tells a real difference between two
    /// engines from rounding that training amplifies (`train_bench curve … torch64`).
    pub fn into_double(mut self) -> Result<Self, String> {
        let _g = tch::no_grad_guard();
        for p in self.params.iter_mut() {
            p.t = p.t.f_to_kind(Kind::Double).ck()?.f_detach().ck()?.f_set_requires_grad(p.trainable).ck()?;
        }
        for (_, rm, rv) in self.running.iter_mut() {
            *rm = rm.f_to_kind(Kind::Double).ck()?;
            *rv = rv.f_to_kind(Kind::Double).ck()?;
        }
        self.dtype = Kind::Double;
        Ok(self)
    }

    /// Images (`[n, C, H, W]` f32, as the loader makes them) onto the device, in the
    /// engine's layout. The copy is asynchronous from pinned memory on a GPU.
    pub fn input(&self, images: &[f32], n: usize) -> Result<Tensor, String> {
        let [c, h, w] = self.input;
        let x = Tensor::f_from_slice(images).ck()?.f_reshape([n as i64, c, h, w]).ck()?;
        if self.device == Device::Cpu {
            return if self.dtype == Kind::Float { Ok(x) } else { x.f_to_kind(self.dtype).ck() };
        }
        let x = pinned(&x)?.f_to_device_(self.device, self.dtype, true, false).ck()?;
        if self.channels_last { to_channels_last(&x) } else { Ok(x) }
    }

    /// Logits `[n, classes]` (f32; f64 for a double network): the first output. `train`:
    /// batch statistics (and running-stat updates) in batch norms, dropout on.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, String> {
        Ok(self.forward_all(x, train, None)?.swap_remove(0))
    }

    /// Every output of the graph (a detector's coverage and boxes), as [`Self::forward`].
    pub fn forward_outputs(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>, String> {
        self.forward_all(x, train, None)
    }

    fn forward_with(&self, x: &Tensor, train: bool, cache: Option<&InferCache>) -> Result<Tensor, String> {
        Ok(self.forward_all(x, train, cache)?.swap_remove(0))
    }

    /// [`Self::forward`] with the engine's inference cache, if any: its bf16 copies of the
    /// kernels replace the parameters, and its folded batch norms feed the fused depthwise
    /// layers (folded at the call without it).
    fn forward_all(&self, x: &Tensor, train: bool, cache: Option<&InferCache>) -> Result<Vec<Tensor>, String> {
        let mut vals: Vec<Option<Tensor>> = Vec::with_capacity(self.steps.len() + 1);
        vals.push(Some(x.shallow_clone()));
        // How many later steps read each value: drop a value after its last reader, as
        // PyTorch's eager modules do, so activations are freed as soon as autograd allows.
        let mut readers = vec![0usize; self.steps.len() + 1];
        for (_, ins) in &self.steps {
            for &i in ins {
                readers[i] += 1;
            }
        }
        for &o in &self.outputs {
            readers[o] += 1;
        }
        let over = cache.and_then(|c| c.kernels.as_deref());
        let p = |i: usize| over.and_then(|o| o[i].as_ref()).unwrap_or(&self.params[i].t);
        // Inference on the GPU: a depthwise convolution read only by an eval-mode batch norm
        // (itself read only by a ReLU/ReLU6, optionally) runs as one kernel of ours; the
        // folded steps then just hand on its output (`folded`: the last of them, the output).
        let fuse = !train && self.fuse_depthwise && self.device != Device::Cpu;
        let mut folded: Option<(usize, Tensor)> = None;
        for (si, (op, ins)) in self.steps.iter().enumerate() {
            if let Some((last, _)) = &folded
                && si <= *last
            {
                release(ins, &mut readers, &mut vals);
                let done = si == *last;
                vals.push(if done { folded.take().map(|(_, y)| y) } else { None });
                continue;
            }
            if fuse
                && let LOp::Conv { w, b, stride, pad, groups } = op
                && *groups > 1
                && let Some((bn_op @ LOp::Bn { .. }, bins)) = self.steps.get(si + 1)
                && bins[..] == [si + 1]
                && readers[si + 1] == 1
            {
                let act = match self.steps.get(si + 2) {
                    Some((LOp::Relu, a)) if a[..] == [si + 2] && readers[si + 2] == 1 => Some((0.0, f64::INFINITY)),
                    Some((LOp::Relu6, a)) if a[..] == [si + 2] && readers[si + 2] == 1 => Some((0.0, 6.0)),
                    _ => None,
                };
                let x = vals[ins[0]].as_ref().expect("a value is kept until its last reader");
                let (padded, padding) = pad_input(x, *pad)?;
                let x = padded.as_ref().unwrap_or(x);
                let computed;
                let (scale, shift) = match cache.and_then(|c| c.dw_bn.get(&si)) {
                    Some((a, b)) => (a, b),
                    None => {
                        computed = self.fold_bn(*b, bn_op, over)?;
                        (&computed.0, &computed.1)
                    }
                };
                if let Some(y) = depthwise_infer(x, p(*w), scale, shift, act, *stride, padding)? {
                    release(ins, &mut readers, &mut vals);
                    vals.push(None);
                    folded = Some((si + 1 + act.is_some() as usize, y));
                    DW_FUSED.with(|n| n.set(n.get() + 1));
                    continue;
                }
            }
            // ReLU/ReLU6 overwrite their input when nothing else reads it (PyTorch's
            // `inplace=True` in torchvision's models): one allocation and one pass less.
            // Never the model input, which belongs to the caller.
            if matches!(op, LOp::Relu | LOp::Relu6) && ins[0] != 0 && readers[ins[0]] == 1 {
                let mut t = vals[ins[0]].take().expect("a value is kept until its last reader");
                readers[ins[0]] = 0;
                let y = if matches!(op, LOp::Relu) { t.f_relu_().ck()? } else { t.f_relu6_().ck()? };
                vals.push(Some(y));
                continue;
            }
            let get = |k: usize| vals[ins[k]].as_ref().expect("a value is kept until its last reader");
            let x = get(0);
            let y = match op {
                LOp::Conv { w, b, stride, pad, groups } => {
                    // Asymmetric padding is applied once, whichever convolution runs.
                    let (padded, padding) = pad_input(x, *pad)?;
                    let x = padded.as_ref().unwrap_or(x);
                    let ours = if *groups > 1 && self.device != Device::Cpu && !(train && self.cudnn_dw_batch == Some(x.size()[0])) {
                        depthwise_padded(x, p(*w), *stride, padding)?
                    } else {
                        None
                    };
                    match (ours, b) {
                        (Some(y), Some(b)) => y.f_add(&p(*b).f_to_kind(y.kind()).ck()?.f_view([1, -1, 1, 1]).ck()?).ck()?,
                        (Some(y), None) => y,
                        (None, _) => x.f_conv2d(p(*w), b.map(p), stride, padding, [1, 1], *groups).ck()?,
                    }
                }
                LOp::Bn { w, b, bn, eps, frozen } => {
                    let (_, rm, rv) = &self.running[*bn];
                    x.f_batch_norm(Some(p(*w)), Some(p(*b)), Some(rm), Some(rv), train && !frozen, 0.1, *eps, true).ck()?
                }
                LOp::Relu => x.f_relu().ck()?,
                // ReLU6 as nn.ReLU6 computes it: hardtanh(0, 6), whose backward is one kernel
                // (clamp's takes several).
                LOp::Relu6 => x.f_relu6().ck()?,
                LOp::MaxPool { kernel, stride, pad } => x.f_max_pool2d(kernel, stride, pad, [1, 1], false).ck()?,
                LOp::Gap => x.f_mean_dim([2i64, 3].as_slice(), false, None::<Kind>).ck()?,
                LOp::Linear { w, b } => x.f_linear(p(*w), b.map(p)).ck()?,
                LOp::Dropout(pr) => x.f_dropout(*pr, train).ck()?,
                LOp::Sigmoid => x.f_sigmoid().ck()?,
                LOp::Add => {
                    let mut acc = x.f_add(get(1)).ck()?;
                    for k in 2..ins.len() {
                        acc = acc.f_add(get(k)).ck()?;
                    }
                    acc
                }
            };
            release(ins, &mut readers, &mut vals);
            vals.push(Some(y));
        }
        self.outputs
            .iter()
            .map(|&o| {
                let out = vals[o].as_ref().ok_or("the output was dropped")?.shallow_clone();
                if out.kind() == Kind::Double { Ok(out) } else { out.f_to_kind(Kind::Float).ck() }
            })
            .collect()
    }

    /// An eval-mode batch norm `bn` (and the bias `conv_b` of the convolution before it)
    /// folded to f32 `[C]` scale and shift: y * scale + shift = batch_norm(y + b).
    fn fold_bn(&self, conv_b: Option<usize>, bn: &LOp, over: Option<&[Option<Tensor>]>) -> Result<(Tensor, Tensor), String> {
        let LOp::Bn { w, b, bn, eps, .. } = bn else { return Err("fold_bn: not a batch norm".into()) };
        let _g = tch::no_grad_guard();
        let p = |i: usize| over.and_then(|o| o[i].as_ref()).unwrap_or(&self.params[i].t);
        let f32 = |t: &Tensor| t.f_to_kind(Kind::Float).ck();
        let (_, rm, rv) = &self.running[*bn];
        let scale = f32(p(*w))?.f_mul(&f32(rv)?.f_add_scalar(*eps).ck()?.f_rsqrt().ck()?).ck()?;
        let mut shift = f32(p(*b))?.f_sub(&f32(rm)?.f_mul(&scale).ck()?).ck()?;
        if let Some(cb) = conv_b {
            shift = shift.f_add(&f32(p(cb))?.f_mul(&scale).ck()?).ck()?;
        }
        Ok((scale.f_contiguous().ck()?, shift.f_contiguous().ck()?))
    }

    /// What inference can reuse until the weights or running statistics change: with
    /// `bf16`, bf16 copies of the kernels; on a GPU with fusion on, every depthwise
    /// convolution's following batch norm folded ([`Self::fold_bn`]), keyed by the
    /// convolution's step.
    fn infer_cache(&self, bf16: bool) -> Result<InferCache, String> {
        let kernels = if bf16 { Some(self.bf16_kernels()?) } else { None };
        let mut dw_bn = HashMap::new();
        if self.fuse_depthwise && self.device != Device::Cpu {
            for (si, (op, _)) in self.steps.iter().enumerate() {
                if let LOp::Conv { b, groups, .. } = op
                    && *groups > 1
                    && let Some((bn @ LOp::Bn { .. }, bins)) = self.steps.get(si + 1)
                    && bins[..] == [si + 1]
                {
                    dw_bn.insert(si, self.fold_bn(*b, bn, kernels.as_deref())?);
                }
            }
        }
        Ok(InferCache { kernels, dw_bn })
    }

    /// bf16 copies of the conv and linear parameters (indexed like the parameters), which
    /// autocast would otherwise cast again at every forward pass.
    fn bf16_kernels(&self) -> Result<Vec<Option<Tensor>>, String> {
        let _g = tch::no_grad_guard();
        let mut out: Vec<Option<Tensor>> = (0..self.params.len()).map(|_| None).collect();
        for (op, _) in &self.steps {
            if let LOp::Conv { w, b, .. } | LOp::Linear { w, b } = op {
                for i in std::iter::once(*w).chain(*b) {
                    out[i] = Some(self.params[i].t.f_to_kind(Kind::BFloat16).ck()?.f_detach().ck()?);
                }
            }
        }
        Ok(out)
    }

    /// Inference logits of host images (`[n, C, H, W]` f32), row-major `[n, classes]`.
    pub fn logits(&self, images: &[f32], n: usize) -> Result<Vec<f32>, String> {
        let x = self.input(images, n)?;
        let _g = tch::no_grad_guard();
        to_vec(&self.forward(&x, false)?)
    }

    /// Every output of the graph for host images, each flat in NCHW order (a detector's
    /// coverage and boxes).
    pub fn outputs(&self, images: &[f32], n: usize) -> Result<Vec<Vec<f32>>, String> {
        let x = self.input(images, n)?;
        let _g = tch::no_grad_guard();
        self.forward_outputs(&x, false)?.iter().map(|t| t.f_contiguous().ck().and_then(|t| to_vec(&t))).collect()
    }

    /// Every weight by torchvision name, as f32 (running statistics included).
    pub fn export(&self) -> Result<Vec<(String, WeightData)>, String> {
        let mut out = Vec::new();
        for p in &self.params {
            out.push((p.name.clone(), WeightData { shape: p.t.size().iter().map(|&s| s as usize).collect(), data: to_vec(&p.t)? }));
        }
        for (n, rm, rv) in &self.running {
            out.push((format!("{n}.running_mean"), WeightData { shape: vec![rm.size()[0] as usize], data: to_vec(rm)? }));
            out.push((format!("{n}.running_var"), WeightData { shape: vec![rv.size()[0] as usize], data: to_vec(rv)? }));
        }
        Ok(out)
    }

    /// Overwrite weights (and running statistics) in place from `w`; every tensor must be there.
    pub fn import(&mut self, w: &HashMap<String, WeightData>) -> Result<(), String> {
        let _g = tch::no_grad_guard();
        let dev = self.device;
        let copy = |dst: &Tensor, name: &str| -> Result<(), String> {
            let d = w.get(name).ok_or_else(|| format!("lacks weight `{name}`"))?;
            if d.data.len() as i64 != dst.numel() as i64 {
                return Err(format!("`{name}` has {} values, the model needs {}", d.data.len(), dst.numel()));
            }
            let src = tensor_of(d, dev)?.f_reshape(dst.size()).ck()?;
            let mut dst = dst.shallow_clone();
            dst.f_copy_(&src).ck()
        };
        for p in &self.params {
            copy(&p.t, &p.name)?;
        }
        for (n, rm, rv) in &self.running {
            copy(rm, &format!("{n}.running_mean"))?;
            copy(rv, &format!("{n}.running_var"))?;
        }
        Ok(())
    }
}

/// Optimizer state per trainable parameter, in PyTorch's fused kernels' layout.
struct OptState {
    /// Adam: first and second moments; SGD with momentum: the buffer.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Adam's per-parameter step counters (f32 scalars).
    step_t: Vec<Tensor>,
    steps: u64,
}

/// A step whose loss and hits are still on the device.
struct Pending {
    loss: Tensor,
    hits: Tensor,
    images: usize,
}

/// The training engine over [`TorchNet`].
pub struct TorchEngine {
    pub net: TorchNet,
    cfg: OptimConfig,
    smoothing: f64,
    /// What a step minimises: cross-entropy (`smoothing`) unless [`Self::with_objective`]
    /// says otherwise.
    /// (Shared: a step reads it while it borrows the engine mutably, without a copy.)
    objective: std::sync::Arc<crate::tasks::Objective>,
    precision: Precision,
    state: OptState,
    /// Indices of the trainable parameters, kernels (decayed) first; the optimizer state
    /// lists follow this order.
    order: Vec<usize>,
    /// How many of `order` are kernels.
    n_kernels: usize,
    pending: std::collections::VecDeque<Pending>,
    /// Inference's reusable tensors (bf16 kernels, folded batch norms), built at the first
    /// inference after a step or restore changed the weights.
    infer_cache: Option<InferCache>,
    /// Depthwise convolutions: the policy, the run's planned steps ([`Engine::plan`]), when
    /// the timing window began, and the step at which training moved to cuDNN.
    dw_policy: DepthwisePolicy,
    planned_steps: Option<u64>,
    dw_probe: Option<std::time::Instant>,
    pub dw_switched_at: Option<u64>,
}

/// The automatic depthwise policy's numbers, measured on the H200 (BENCHMARKS.md, "Depthwise
/// convolutions on our kernels"): cuDNN's run-time compilation costs about this many
/// seconds per distinct depthwise convolution (forward and backward) in bf16 / f32, and
/// then saves about this fraction of a MobileNetV2 training step in bf16 / tf32 (against
/// our 3x3 strip kernels: 6,837 vs 6,574-6,658 img/s bf16, 5,605 vs 5,587-5,596 tf32).
/// Training moves to cuDNN when the steps left would save at least twice the compilation:
/// in bf16 after ~20,000 steps, in tf32 after ~50,000.
const DW_COMPILE_S_BF16: f64 = 0.6;
const DW_COMPILE_S_F32: f64 = 0.3;
const DW_CUDNN_SAVES_BF16: f64 = 0.03;
const DW_CUDNN_SAVES_F32: f64 = 0.005;
/// Would moving the training batches' depthwise convolutions to cuDNN pay: do `steps_left`
/// steps of `per_step` seconds (on our kernels) save at least twice what cuDNN's
/// compilation of `kinds` distinct depthwise convolutions costs?
fn cudnn_pays(steps_left: u64, per_step: f64, kinds: usize, precision: Precision) -> bool {
    let (per_kind, saves) = if precision == Precision::Bf16 { (DW_COMPILE_S_BF16, DW_CUDNN_SAVES_BF16) } else { (DW_COMPILE_S_F32, DW_CUDNN_SAVES_F32) };
    steps_left as f64 * per_step * saves > 2.0 * per_kind * kinds as f64
}

/// Steps timed (after the first few, which include libtorch's own start-up) before deciding.
const DW_PROBE_FROM: u64 = 3;
const DW_PROBE_STEPS: u64 = 10;

impl TorchEngine {
    pub fn new(net: TorchNet, cfg: &TrainConfig, precision: Precision) -> Result<Self, String> {
        let trainable: Vec<usize> = (0..net.params.len()).filter(|&i| net.params[i].trainable).collect();
        let (kernels, others): (Vec<usize>, Vec<usize>) = trainable.iter().partition(|&&i| net.params[i].kernel);
        let n_kernels = kernels.len();
        let zeros = |i: &usize| net.params[i.to_owned()].t.f_zeros_like().ck().and_then(|t| t.f_detach().ck());
        let order: Vec<usize> = kernels.into_iter().chain(others).collect();
        let (m, v, step_t) = match cfg.optim.kind {
            OptimKind::Sgd { momentum, .. } => (if momentum > 0.0 { order.iter().map(zeros).collect::<Result<_, _>>()? } else { Vec::new() }, Vec::new(), Vec::new()),
            _ => (
                order.iter().map(zeros).collect::<Result<_, _>>()?,
                order.iter().map(zeros).collect::<Result<_, _>>()?,
                order.iter().map(|_| Tensor::f_zeros(Vec::<i64>::new(), (Kind::Float, net.device)).ck()).collect::<Result<_, _>>()?,
            ),
        };
        let dw_policy = DepthwisePolicy::from_env()?;
        Ok(TorchEngine {
            cfg: cfg.optim.clone(),
            smoothing: cfg.label_smoothing,
            objective: std::sync::Arc::new(crate::tasks::Objective::Classification(crate::tasks::classification::CrossEntropy { classes: 0, smoothing: cfg.label_smoothing })),
            precision,
            state: OptState { m, v, step_t, steps: 0 },
            order,
            n_kernels,
            pending: Default::default(),
            infer_cache: None,
            net,
            dw_policy,
            planned_steps: None,
            dw_probe: None,
            dw_switched_at: None,
        })
    }

    /// Train for `objective` (a detector's cost) instead of cross-entropy.
    pub fn with_objective(mut self, objective: crate::tasks::Objective) -> Self {
        self.objective = std::sync::Arc::new(objective);
        self
    }

    /// A detector's targets for images `lo..hi` of `b` as device tensors: coverage, its
    /// element weights, boxes, theirs ([`DetectionCost::weighted_targets`]).
    fn detection_targets(&self, d: &DetectionCost, b: &Batch, denom: usize) -> Result<[Tensor; 4], String> {
        let (ct, cw, bt, bw) = d.weighted_targets(b, 0, b.len, denom);
        let (gh, gw) = (d.in_h.div_ceil(d.stride) as i64, d.in_w.div_ceil(d.stride) as i64);
        let c = d.cost.len() as i64;
        let n = b.len as i64;
        let up = |v: Vec<f32>, ch: i64| -> Result<Tensor, String> {
            let t = Tensor::f_from_slice(&v).ck()?.f_reshape([n, ch, gh, gw]).ck()?;
            if self.net.device == Device::Cpu { Ok(t) } else { pinned(&t)?.f_to_device_(self.net.device, Kind::Float, true, false).ck() }
        };
        Ok([up(ct, c)?, up(cw, c)?, up(bt, 4 * c)?, up(bw, 4 * c)?])
    }

    /// TAO's cost on the network's outputs ([`crate::tasks::detection::loss`]), in f32.
    fn detection_loss(outs: &[Tensor], t: &[Tensor; 4]) -> Result<Tensor, String> {
        let [ct, cw, bt, bw] = t;
        let cov = outs[0].f_to_kind(Kind::Float).ck()?;
        let bbox = outs[1].f_to_kind(Kind::Float).ck()?;
        let pos = cov.f_add_scalar(1e-5).ck()?.f_log().ck()?.f_mul(ct).ck()?;
        let neg = cov.f_neg().ck()?.f_add_scalar(1.0 + 1e-5).ck()?.f_log().ck()?.f_mul(&ct.f_neg().ck()?.f_add_scalar(1.0).ck()?).ck()?;
        let bce = pos.f_add(&neg).ck()?.f_neg().ck()?.f_mul(cw).ck()?.f_sum(Kind::Float).ck()?;
        let l1 = bbox.f_sub(bt).ck()?.f_abs().ck()?.f_mul(bw).ck()?.f_sum(Kind::Float).ck()?;
        bce.f_add(&l1).ck()
    }

    /// A detector's training step: the batch to the device, its targets, then
    /// [`Self::step_detection_tensors`].
    fn step_detection(&mut self, d: &DetectionCost, b: &Batch, lr: f64) -> Result<(Tensor, Tensor), String> {
        let x = self.net.input(&b.images, b.len)?;
        let t = self.detection_targets(d, b, b.len)?;
        self.step_detection_tensors(&x, &t, lr)
    }

    /// The targets of a detector's batch on the engine's device (coverage, its weights, boxes,
    /// their weights), as [`Self::step_detection_tensors`] takes them.
    pub fn detection_batch_targets(&self, b: &Batch) -> Result<[Tensor; 4], String> {
        match &*self.objective {
            crate::tasks::Objective::Detection(d) => self.detection_targets(d, b, b.len),
            _ => Err("the engine does not train a detector".into()),
        }
    }

    /// A detector's step on a device batch and device targets: forward, TAO's cost, backward,
    /// optimizer; the loss and a zero hit count, still on the device.
    pub fn step_detection_tensors(&mut self, x: &Tensor, t: &[Tensor; 4], lr: f64) -> Result<(Tensor, Tensor), String> {
        self.infer_cache = None;
        self.depthwise_policy(x.size()[0])?;
        let all: Vec<&Tensor> = self.order.iter().map(|&i| &self.net.params[i].t).collect();
        check(unsafe { ffi::tf_grads_to_none(ptrs(&all).as_ptr(), all.len()) })?;
        let outs = self.with_autocast(|| self.net.forward_outputs(x, true))?;
        let loss = Self::detection_loss(&outs, t)?;
        loss.f_backward().ck()?;
        self.optimizer_step(lr)?;
        let hits = Tensor::f_zeros(Vec::<i64>::new(), (Kind::Int64, self.net.device)).ck()?;
        Ok((loss.f_detach().ck()?, hits))
    }

    /// bf16 autocast is on: precision bf16 on a GPU (libtorch's CPU path runs f32).
    fn bf16_autocast(&self) -> bool {
        self.precision == Precision::Bf16 && self.net.device != Device::Cpu
    }

    /// Every output of the network for a device batch, in inference mode, at the engine's
    /// precision (bf16 autocast when trained in bf16).
    pub fn infer_outputs(&self, x: &Tensor) -> Result<Vec<Tensor>, String> {
        let _g = tch::no_grad_guard();
        self.with_autocast(|| self.net.forward_outputs(x, false))
    }

    fn with_autocast<T>(&self, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        if !self.bf16_autocast() {
            return f();
        }
        check(unsafe { ffi::tf_autocast(1, 1) })?;
        let r = f();
        check(unsafe { ffi::tf_autocast(0, 1) })?;
        r
    }

    /// Forward, loss, backward and the optimizer step on a device batch; the loss and
    /// hits stay on the device.
    pub fn step_tensors(&mut self, x: &Tensor, labels: &Tensor, lr: f64) -> Result<(Tensor, Tensor), String> {
        self.infer_cache = None;
        self.depthwise_policy(x.size()[0])?;
        let all: Vec<&Tensor> = self.order.iter().map(|&i| &self.net.params[i].t).collect();
        check(unsafe { ffi::tf_grads_to_none(ptrs(&all).as_ptr(), all.len()) })?;
        let logits = self.with_autocast(|| self.net.forward(x, true))?;
        let loss = logits.f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, self.smoothing).ck()?;
        loss.f_backward().ck()?;
        let hits = tch::no_grad(|| logits.f_argmax(1, false).and_then(|a| a.f_eq_tensor(labels)).and_then(|e| e.f_sum(Kind::Int64))).ck()?;
        self.optimizer_step(lr)?;
        Ok((loss.f_detach().ck()?, hits))
    }

    /// Tell the engine how many optimizer steps the run will take in all (see
    /// [`DepthwisePolicy::Auto`]).
    pub fn set_plan(&mut self, total_steps: u64) {
        self.planned_steps = Some(total_steps);
    }

    /// [`DepthwisePolicy::Auto`]: our depthwise kernels start at once (cuDNN compiles its NHWC
    /// depthwise engines at run time, about a second per distinct convolution, in every
    /// process), but run a MobileNetV2 step about 15 % slower than cuDNN's. Time steps
    /// DW_PROBE_FROM.. (+DW_PROBE_STEPS); if the planned steps left would save more than
    /// twice cuDNN's compilation, training batches of this size move to cuDNN. Validation,
    /// inference and other batch sizes (an epoch's last batch) stay on our kernels.
    fn depthwise_policy(&mut self, batch: i64) -> Result<(), String> {
        let Device::Cuda(index) = self.net.device else { return Ok(()) };
        if self.dw_policy != DepthwisePolicy::Auto || self.dw_switched_at.is_some() || !depthwise_registered(index) {
            return Ok(());
        }
        let Some(planned) = self.planned_steps else { return Ok(()) };
        let kinds = self.net.depthwise_kinds();
        let k = self.state.steps;
        if kinds == 0 || k > DW_PROBE_FROM + DW_PROBE_STEPS {
            return Ok(());
        }
        if k == DW_PROBE_FROM {
            tch::Cuda::synchronize(index as i64);
            self.dw_probe = Some(std::time::Instant::now());
        } else if k == DW_PROBE_FROM + DW_PROBE_STEPS
            && let Some(t0) = self.dw_probe
        {
            tch::Cuda::synchronize(index as i64);
            let per_step = t0.elapsed().as_secs_f64() / DW_PROBE_STEPS as f64;
            if cudnn_pays(planned.saturating_sub(k), per_step, kinds, self.precision) {
                self.net.cudnn_dw_batch = Some(batch);
                self.dw_switched_at = Some(k);
            }
        }
        Ok(())
    }

    fn optimizer_step(&mut self, lr: f64) -> Result<(), String> {
        let _g = tch::no_grad_guard();
        let nk = self.n_kernels;
        let params: Vec<&Tensor> = self.order.iter().map(|&i| &self.net.params[i].t).collect();
        let grads: Vec<Tensor> = params.iter().map(|t| t.grad()).collect();
        // A trainable parameter the loss does not reach has no gradient. The fused kernels
        // take one list with one step counter per entry, so it gets a zero gradient and
        // stays in the list (its momentum and weight decay still act: PyTorch's and the
        // Burn engine's optimizers would skip it instead).
        let grads: Vec<Tensor> = grads.into_iter().zip(&params).map(|(g, p)| if g.defined() { Ok(g) } else { p.f_zeros_like().ck() }).collect::<Result<_, _>>()?;
        let gref: Vec<&Tensor> = grads.iter().collect();
        let (pp, gp) = (ptrs(&params), ptrs(&gref));
        if self.cfg.l1 > 0.0 {
            check(unsafe { ffi::tf_add_l1(pp.as_ptr(), gp.as_ptr(), nk, self.cfg.l1) })?;
        }
        let wd = self.cfg.weight_decay;
        let first = self.state.steps == 0;
        self.state.steps += 1;
        match self.cfg.kind {
            OptimKind::Sgd { momentum, nesterov } => {
                let mref: Vec<&Tensor> = self.state.m.iter().collect();
                let mp = ptrs(&mref);
                let nb = |lo: usize, hi: usize| if mp.is_empty() { (std::ptr::null(), 0) } else { (mp[lo..hi].as_ptr(), hi - lo) };
                let (b0, n0) = nb(0, nk);
                check(unsafe { ffi::tf_fused_sgd(pp.as_ptr(), gp.as_ptr(), b0, nk, n0, wd, momentum, lr, nesterov as i32, first as i32) })?;
                let (b1, n1) = nb(nk, params.len());
                check(unsafe { ffi::tf_fused_sgd(pp[nk..].as_ptr(), gp[nk..].as_ptr(), b1, params.len() - nk, n1, 0.0, momentum, lr, nesterov as i32, first as i32) })?;
            }
            OptimKind::Adam { beta1, beta2, eps } | OptimKind::AdamW { beta1, beta2, eps } => {
                let decoupled = matches!(self.cfg.kind, OptimKind::AdamW { .. }) as i32;
                let (mref, vref, sref): (Vec<&Tensor>, Vec<&Tensor>, Vec<&Tensor>) = (self.state.m.iter().collect(), self.state.v.iter().collect(), self.state.step_t.iter().collect());
                let (mp, vp, sp) = (ptrs(&mref), ptrs(&vref), ptrs(&sref));
                let n = params.len();
                check(unsafe { ffi::tf_fused_adam(pp.as_ptr(), gp.as_ptr(), mp.as_ptr(), vp.as_ptr(), sp.as_ptr(), nk, lr, beta1, beta2, wd, eps, decoupled) })?;
                check(unsafe { ffi::tf_fused_adam(pp[nk..].as_ptr(), gp[nk..].as_ptr(), mp[nk..].as_ptr(), vp[nk..].as_ptr(), sp[nk..].as_ptr(), n - nk, lr, beta1, beta2, 0.0, eps, decoupled) })?;
            }
        }
        Ok(())
    }

    /// Inference logits for a device batch (no gradient, running statistics). What depends
    /// only on the weights is made once and reused until a step or restore changes them: in
    /// bf16 the kernels' casts (autocast alone would cast them at every call: PyTorch's cast
    /// cache lives only as long as one autocast region), on a GPU the fused depthwise
    /// layers' batch norms folded to scale and shift (5 small kernels per layer otherwise).
    pub fn infer(&mut self, x: &Tensor) -> Result<Tensor, String> {
        let _g = tch::no_grad_guard();
        if self.infer_cache.is_none() {
            self.infer_cache = Some(self.net.infer_cache(self.bf16_autocast())?);
        }
        let cache = self.infer_cache.as_ref();
        self.with_autocast(|| self.net.forward_with(x, false, cache))
    }

    /// [`Self::infer`] without its cache: autocast casts and batch norms are folded at every
    /// call. For checking that the cache changes no result.
    pub fn infer_uncached(&self, x: &Tensor) -> Result<Tensor, String> {
        let _g = tch::no_grad_guard();
        self.with_autocast(|| self.net.forward(x, false))
    }

    fn labels(&self, b: &Batch) -> Result<Tensor, String> {
        let l: Vec<i64> = b.labels.iter().map(|&x| x as i64).collect();
        let t = Tensor::f_from_slice(&l).ck()?;
        if self.net.device == Device::Cpu { Ok(t) } else { pinned(&t)?.f_to_device_(self.net.device, Kind::Int64, true, false).ck() }
    }

    fn finish(p: Pending) -> Result<StepDone, String> {
        let loss = p.loss.f_double_value(&[]).ck()?;
        let hits = p.hits.f_int64_value(&[]).ck()? as usize;
        Ok(StepDone { loss, hits, images: p.images })
    }
}

impl Engine for TorchEngine {
    fn plan(&mut self, total_steps: u64) {
        self.set_plan(total_steps);
    }

    fn step(&mut self, b: &Batch, lr: f64) -> Result<Vec<StepDone>, String> {
        let objective = self.objective.clone();
        let (loss, hits) = match &*objective {
            crate::tasks::Objective::Detection(d) => self.step_detection(d, b, lr)?,
            crate::tasks::Objective::Classification(_) => {
                let x = self.net.input(&b.images, b.len)?;
                let y = self.labels(b)?;
                self.step_tensors(&x, &y, lr)?
            }
        };
        self.pending.push_back(Pending { loss, hits, images: b.len });
        // Read a step's numbers only when the next one is queued: the GPU never waits for
        // the host.
        let mut done = Vec::new();
        while self.pending.len() > 1 {
            done.push(Self::finish(self.pending.pop_front().expect("non-empty"))?);
        }
        Ok(done)
    }

    fn flush(&mut self) -> Result<Vec<StepDone>, String> {
        self.pending.drain(..).map(Self::finish).collect()
    }

    fn validate(&mut self, batches: &mut dyn Iterator<Item = Result<Batch, String>>) -> Result<(f64, usize, usize), String> {
        let (mut loss, mut hits, mut n) = (None::<Tensor>, None::<Tensor>, 0usize);
        for b in batches {
            let b = b?;
            let x = self.net.input(&b.images, b.len)?;
            let (l, h) = if let crate::tasks::Objective::Detection(d) = &*self.objective {
                let t = self.detection_targets(d, &b, 1)?;
                let _g = tch::no_grad_guard();
                let outs = self.with_autocast(|| self.net.forward_outputs(&x, false))?;
                (Self::detection_loss(&outs, &t)?, Tensor::f_zeros(Vec::<i64>::new(), (Kind::Int64, self.net.device)).ck()?)
            } else {
                let y = self.labels(&b)?;
                let logits = self.infer(&x)?;
                let l = logits.f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0).ck()?;
                let h = logits.f_argmax(1, false).and_then(|a| a.f_eq_tensor(&y)).and_then(|e| e.f_sum(Kind::Int64)).ck()?;
                (l, h)
            };
            loss = Some(match loss {
                Some(acc) => acc.f_add(&l).ck()?,
                None => l.f_to_kind(Kind::Double).ck()?,
            });
            hits = Some(match hits {
                Some(acc) => acc.f_add(&h).ck()?,
                None => h,
            });
            n += b.len;
        }
        let loss = match loss {
            Some(t) => t.f_double_value(&[]).ck()?,
            None => 0.0,
        };
        let hits = match hits {
            Some(t) => t.f_int64_value(&[]).ck()? as usize,
            None => 0,
        };
        Ok((loss, hits, n))
    }

    fn seed(&mut self, seed: u64) {
        tch::manual_seed(seed as i64);
    }

    fn steps(&self) -> u64 {
        self.state.steps
    }

    fn weights(&self) -> Result<Vec<(String, WeightData)>, String> {
        self.net.export()
    }

    /// `name#0` (Adam's first moment or SGD's buffer) and `name#1` (second moment), flat,
    /// as the Burn engine's optimizer writes them.
    fn optimizer_state(&self) -> Result<Vec<(String, WeightData)>, String> {
        let mut out = Vec::new();
        for (k, &i) in self.order.iter().enumerate() {
            let name = &self.net.params[i].name;
            for (slot, list) in [&self.state.m, &self.state.v].into_iter().enumerate() {
                if let Some(t) = list.get(k) {
                    let data = to_vec(t)?;
                    out.push((format!("{name}#{slot}"), WeightData { shape: vec![data.len()], data }));
                }
            }
        }
        Ok(out)
    }

    fn restore(&mut self, weights: &HashMap<String, WeightData>, optimizer: &HashMap<String, WeightData>, steps: u64) -> Result<(), String> {
        self.infer_cache = None;
        self.net.import(weights)?;
        let _g = tch::no_grad_guard();
        for (k, &i) in self.order.iter().enumerate() {
            let name = self.net.params[i].name.clone();
            let size = self.net.params[i].t.size();
            for (slot, list) in [&mut self.state.m, &mut self.state.v].into_iter().enumerate() {
                if let Some(t) = list.get_mut(k) {
                    let key = format!("{name}#{slot}");
                    let d = optimizer.get(&key).ok_or_else(|| format!("the optimizer state lacks `{key}`"))?;
                    let src = tensor_of(d, self.net.device)?.f_reshape(&size).ck()?;
                    t.f_copy_(&src).ck()?;
                }
            }
        }
        for s in self.state.step_t.iter_mut() {
            let _ = s.f_fill_(steps as f64).ck()?;
        }
        self.state.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! libtorch on the CPU against the Burn engine (the reference): forward passes, training
    //! steps with each optimizer, checkpoints across engines.
    use super::*;
    use crate::model::optim::Schedule;
    use crate::model::testutil;
    use crate::model::net::GraphNet;
    use crate::model::train::BurnEngine;
    use burn::backend::{Autodiff, NdArray};

    type B = Autodiff<NdArray<f32>>;

    fn images(n: usize, g: &ModelGraph, seed: u64) -> Vec<f32> {
        let mut rng = crate::data::rng::Rng::new(seed);
        (0..n * g.input.len()).map(|_| (rng.f64() as f32 - 0.5) * 3.0).collect()
    }

    fn batch(n: usize, g: &ModelGraph, seed: u64) -> Batch {
        let classes = g.classes.len() as u32;
        // A detector's batches carry boxes (one to three an image, some images none).
        let (w, h) = (g.input.width as f32, g.input.height as f32);
        let mut rng = crate::data::rng::Rng::new(seed ^ 77);
        let boxes = (0..n)
            .map(|i| {
                (0..(i % 4))
                    .map(|_| {
                        let k = rng.below(classes as u64) as u32;
                        let (x1, y1) = (rng.f64() as f32 * w * 0.6, rng.f64() as f32 * h * 0.6);
                        crate::data::BoxLabel { class: k.to_string(), class_id: k, bbox: [x1, y1, x1 + 8.0 + rng.f64() as f32 * w * 0.4, y1 + 8.0 + rng.f64() as f32 * h * 0.4] }
                    })
                    .collect()
            })
            .collect();
        Batch { len: n, images: images(n, g, seed), labels: (0..n as u32).map(|i| (i * 7 + seed as u32) % classes).collect(), keys: vec![String::new(); n], targets: vec![None; n], boxes, masks: vec![None; n] }
    }

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn forward_matches_burn_for_every_architecture() {
        let rt = Runtime::cpu();
        for g in testutil::graphs() {
            let w = testutil::random_weights(&g, 3);
            let x = images(2, &g, 5);
            let s = &g.input;
            let device = Default::default();
            let xb = burn::tensor::Tensor::<NdArray<f32>, 4>::from_data(burn::tensor::TensorData::new(x.clone(), [2, s.channels as usize, s.height as usize, s.width as usize]), &device);
            let want = testutil::forward(&g, &w, xb);
            let net = TorchNet::new(&g, &w, &|_| false, &rt).unwrap();
            let got = to_vec(&net.forward(&net.input(&x, 2).unwrap(), false).unwrap()).unwrap();
            assert!(rel(&got, &want) < 1e-4, "{}: {}", g.arch, rel(&got, &want));
        }
    }

    fn config(kind: OptimKind, wd: f64, l1: f64, smoothing: f64) -> TrainConfig {
        TrainConfig {
            epochs: 1,
            batch_size: 8,
            lr: 0.05,
            schedule: Schedule::Constant,
            optim: OptimConfig { kind, weight_decay: wd, l1 },
            label_smoothing: smoothing,
            augment: None,
            train_split: "train".into(),
            val_split: None,
            val_every: 1,
            checkpoint_every: 0,
            seed: 1,
            detection: None,
        }
    }

    /// The two engines moved the weights the same way: the updates (after - before) point the
    /// same way (cosine > `min_cos`) with the same length (within 1 %), over the parameters and,
    /// apart, over the running statistics (their updates are far larger and would hide a wrong
    /// gradient). Single elements are no test: Adam scales an element whose gradient is float
    /// noise to a full-size step in either engine.
    fn same_update(before: &HashMap<String, WeightData>, a: &HashMap<String, WeightData>, b: &HashMap<String, WeightData>, min_cos: f64) {
        for running in [false, true] {
            let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
            for (k, w0) in before.iter().filter(|(k, _)| k.contains(".running_") == running) {
                for ((x0, xa), xb) in w0.data.iter().zip(&a[k].data).zip(&b[k].data) {
                    let (da, db) = ((xa - x0) as f64, (xb - x0) as f64);
                    dot += da * db;
                    na += da * da;
                    nb += db * db;
                }
            }
            assert!(na > 0.0, "nothing moved (running statistics: {running})");
            let cos = dot / (na.sqrt() * nb.sqrt());
            assert!(cos > min_cos && (na.sqrt() / nb.sqrt() - 1.0).abs() < 0.01, "running statistics: {running}: cosine {cos}, lengths {} vs {}", na.sqrt(), nb.sqrt());
        }
    }

    /// ResNet-18 (residual adds, batch norms, max pool; no dropout, whose draws differ) at
    /// 64x64, so that its last batch norms see 2x2 maps: at 1x1 and a batch of 8, a channel's
    /// batch variance can be near zero and amplify float noise without bound.
    fn resnet64() -> ModelGraph {
        let c: Vec<String> = (0..7).map(|i| i.to_string()).collect();
        crate::model::builders::resnet(18, 7, 0.25, crate::data::image_io::InputSpec::imagenet(64, 64), c).unwrap()
    }

    /// Two steps on the same batches from the same weights (the second uses the optimizer
    /// state of the first): the losses, the weight updates and the optimizer state of both
    /// engines agree. More steps are no sharper test: random weights on batches of 8 are a
    /// chaotic regime, where any two float orders part ways after a few steps.
    fn same_steps(kind: OptimKind, lr: f64, wd: f64, l1: f64, frozen: &dyn Fn(&str) -> bool) {
        // Adam divides by the gradient's root mean square, so elements whose gradient is
        // float noise take full steps in both engines, in different directions.
        let tol = if matches!(kind, OptimKind::Sgd { .. }) { 1e-4 } else { 1e-3 };
        same_steps_on(&resnet64(), kind, lr, wd, l1, frozen, tol, 0.995);
    }

    #[allow(clippy::too_many_arguments)]
    fn same_steps_on(g: &ModelGraph, kind: OptimKind, lr: f64, wd: f64, l1: f64, frozen: &dyn Fn(&str) -> bool, tol: f64, min_cos: f64) {
        let g = g.clone();
        let w = testutil::random_weights(&g, 9);
        let cfg = config(kind, wd, l1, 0.1);
        let device = Default::default();
        let (net, _) = GraphNet::<B>::new(&g, &device).unwrap().load_weights(&w, &device).unwrap();
        let (net, _) = net.freeze(frozen);
        let mut burn = BurnEngine::<B>::new(&g, net, &cfg, &device).with_chunks(1);
        let mut torch = TorchEngine::new(TorchNet::new(&g, &w, frozen, &Runtime::cpu()).unwrap(), &cfg, Precision::Fp32).unwrap().with_objective(cfg.objective(&g));
        let (mut lb, mut lt) = (Vec::new(), Vec::new());
        for i in 0..2 {
            let b = batch(16, &g, i);
            lb.extend(burn.step(&b, lr).unwrap().into_iter().map(|d| d.loss as f32));
            lt.extend(torch.step(&b, lr).unwrap().into_iter().map(|d| d.loss as f32));
        }
        lt.extend(torch.flush().unwrap().into_iter().map(|d| d.loss as f32));
        assert_eq!(lb.len(), 2);
        assert!((rel(&lt, &lb) as f64) < tol, "losses {lt:?} vs {lb:?}");
        let wb: HashMap<String, WeightData> = burn.weights().unwrap().into_iter().collect();
        let wt: HashMap<String, WeightData> = torch.weights().unwrap().into_iter().collect();
        assert_eq!(wb.len(), wt.len());
        same_update(&w, &wb, &wt, min_cos);
        for (k, v) in &wt {
            if frozen(k.rsplit_once('.').unwrap().0) {
                assert_eq!(v.data, w[k].data, "frozen `{k}` moved");
            }
        }
        let ob: HashMap<String, WeightData> = burn.optimizer_state().unwrap().into_iter().collect();
        let ot: HashMap<String, WeightData> = torch.optimizer_state().unwrap().into_iter().collect();
        let mut kb: Vec<_> = ob.keys().collect();
        let mut kt: Vec<_> = ot.keys().collect();
        kb.sort();
        kt.sort();
        assert_eq!(kb, kt);
        assert_eq!(burn.steps(), torch.steps());
    }

    #[test]
    fn sgd_nesterov_with_decay_and_l1_steps_like_burn() {
        same_steps(OptimKind::Sgd { momentum: 0.9, nesterov: true }, 0.002, 1e-3, 1e-4, &|_| false);
    }

    #[test]
    fn adam_steps_like_burn() {
        same_steps(OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 1e-4, 1e-4, 0.0, &|_| false);
    }

    #[test]
    fn adamw_with_frozen_stem_steps_like_burn() {
        same_steps(OptimKind::AdamW { beta1: 0.9, beta2: 0.99, eps: 1e-8 }, 1e-4, 0.01, 0.0, &|n| n == "conv1" || n == "bn1" || n.starts_with("layer1."));
    }

    /// MobileNetV2 (ReLU6, depthwise convolutions, batch norms after every convolution) at
    /// 64x64, dropout off (its draws differ between engines).
    #[test]
    fn mobilenet_v2_steps_like_burn() {
        let mut g = crate::model::builders::mobilenet_v2(7, 0.5, crate::data::image_io::InputSpec::imagenet(64, 64), (0..7).map(|i| i.to_string()).collect());
        for l in g.layers.iter_mut() {
            if let Op::Dropout { p } = &mut l.op {
                *p = 0.0;
            }
        }
        // Looser than ResNet-18's: measured 6.5e-5 between the second steps' losses and a
        // parameter-update cosine of 0.9948, which is rounding (a random MobileNetV2 on a batch
        // of 16 is far rougher: BENCHMARKS.md, "Noise floor").
        same_steps_on(&g, OptimKind::Sgd { momentum: 0.9, nesterov: false }, 5e-4, 1e-4, 0.0, &|_| false, 5e-4, 0.99);
    }

    /// A DetectNet_v2 detector (two outputs, a sigmoid, TAO's cost on targets rasterised from
    /// each batch's boxes) takes the same steps in both engines, and validates alike.
    #[test]
    fn detector_steps_like_burn() {
        let g = crate::model::builders::detectnet_v2("resnet18", 0.25, crate::data::image_io::InputSpec::plain(96, 64, 3), vec!["a".into(), "b".into()]).unwrap();
        same_steps_on(&g, OptimKind::Sgd { momentum: 0.9, nesterov: false }, 0.01, 1e-4, 0.0, &|_| false, 1e-4, 0.995);
        let w = testutil::random_weights(&g, 4);
        let cfg = config(OptimKind::Sgd { momentum: 0.0, nesterov: false }, 0.0, 0.0, 0.0);
        let device = Default::default();
        let (net, _) = GraphNet::<B>::new(&g, &device).unwrap().load_weights(&w, &device).unwrap();
        let mut burn = BurnEngine::<B>::new(&g, net, &cfg, &device).with_chunks(1);
        let mut torch = TorchEngine::new(TorchNet::new(&g, &w, &|_| false, &Runtime::cpu()).unwrap(), &cfg, Precision::Fp32).unwrap().with_objective(cfg.objective(&g));
        let (lb, _, nb) = burn.validate(&mut [Ok(batch(6, &g, 1)), Ok(batch(5, &g, 2))].into_iter()).unwrap();
        let (lt, _, nt) = torch.validate(&mut [Ok(batch(6, &g, 1)), Ok(batch(5, &g, 2))].into_iter()).unwrap();
        assert_eq!((nb, nt), (11, 11));
        assert!(lb > 0.0 && ((lt - lb) / lb).abs() < 1e-4, "validation loss {lt} vs {lb}");
        let net = TorchNet::new(&g, &w, &|_| false, &Runtime::cpu()).unwrap();
        let x = images(2, &g, 3);
        let got = net.outputs(&x, 2).unwrap();
        let want = testutil::forward_all(&g, &w, &x, 2);
        assert_eq!(got.len(), 2);
        for (a, b) in got.iter().zip(&want) {
            assert!(rel(a, b) < 1e-4, "outputs differ by {}", rel(a, b));
        }
    }

    #[test]
    fn into_double_computes_in_f64() {
        let g = testutil::graphs().remove(2);
        let w = testutil::random_weights(&g, 5);
        let x = images(4, &g, 1);
        let rt = Runtime::cpu();
        let net = TorchNet::new(&g, &w, &|_| false, &rt).unwrap();
        let want = to_vec(&net.forward(&net.input(&x, 4).unwrap(), false).unwrap()).unwrap();
        let net = net.into_double().unwrap();
        let xd = net.input(&x, 4).unwrap();
        assert_eq!(xd.kind(), Kind::Double);
        let y = net.forward(&xd, false).unwrap();
        assert_eq!(y.kind(), Kind::Double);
        assert!(rel(&to_vec(&y).unwrap(), &want) < 1e-4);
        // It trains, and reports its weights as f32 under the same names.
        let cfg = config(OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 0.0, 0.0, 0.0);
        let mut e = TorchEngine::new(net, &cfg, Precision::Fp32).unwrap();
        e.step(&batch(4, &g, 0), 1e-3).unwrap();
        let done = e.flush().unwrap();
        assert!(done[0].loss.is_finite());
        let ws: HashMap<String, WeightData> = e.weights().unwrap().into_iter().collect();
        assert_eq!(ws.len(), w.len());
    }

    #[test]
    fn checkpoint_moves_between_engines() {
        // A Burn checkpoint resumes in the torch engine and gives the step Burn would take.
        let g = resnet64();
        let w = testutil::random_weights(&g, 4);
        let cfg = config(OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 0.0, 0.0, 0.0);
        let device = Default::default();
        let (net, _) = GraphNet::<B>::new(&g, &device).unwrap().load_weights(&w, &device).unwrap();
        let mut burn = BurnEngine::<B>::new(&g, net, &cfg, &device).with_chunks(1);
        for i in 0..2 {
            burn.step(&batch(16, &g, i), 0.01).unwrap();
        }
        let ws: HashMap<String, WeightData> = burn.weights().unwrap().into_iter().collect();
        let os: HashMap<String, WeightData> = burn.optimizer_state().unwrap().into_iter().collect();
        let mut torch = TorchEngine::new(TorchNet::new(&g, &w, &|_| false, &Runtime::cpu()).unwrap(), &cfg, Precision::Fp32).unwrap();
        torch.restore(&ws, &os, burn.steps()).unwrap();
        let b = batch(16, &g, 7);
        let lb = burn.step(&b, 0.01).unwrap()[0].loss;
        torch.step(&b, 0.01).unwrap();
        let lt = torch.flush().unwrap()[0].loss;
        assert!((lb - lt).abs() / lb.abs() < 1e-4, "{lb} vs {lt}");
        assert_eq!(torch.steps(), 3);
        let wb: HashMap<String, WeightData> = burn.weights().unwrap().into_iter().collect();
        let wt: HashMap<String, WeightData> = torch.weights().unwrap().into_iter().collect();
        same_update(&ws, &wb, &wt, 0.995);
        // A checkpoint missing a tensor is refused with its name.
        let mut partial = os.clone();
        let k = partial.keys().next().unwrap().clone();
        partial.remove(&k);
        let e = torch.restore(&ws, &partial, 3).unwrap_err();
        assert!(e.contains(&k), "{e}");
    }

    #[test]
    fn validation_counts_like_burn() {
        let g = testutil::graphs().remove(2);
        let w = testutil::random_weights(&g, 2);
        let cfg = config(OptimKind::Sgd { momentum: 0.0, nesterov: false }, 0.0, 0.0, 0.0);
        let device = Default::default();
        let (net, _) = GraphNet::<B>::new(&g, &device).unwrap().load_weights(&w, &device).unwrap();
        let mut burn = BurnEngine::<B>::new(&g, net, &cfg, &device);
        let mut torch = TorchEngine::new(TorchNet::new(&g, &w, &|_| false, &Runtime::cpu()).unwrap(), &cfg, Precision::Fp32).unwrap();
        let bs = || (0..3).map(|i| Ok(batch(5, &g, i)));
        let (lb, hb, nb) = burn.validate(&mut bs()).unwrap();
        let (lt, ht, nt) = torch.validate(&mut bs()).unwrap();
        assert_eq!((hb, nb), (ht, nt));
        assert!((lb - lt).abs() / lb < 1e-4, "{lb} vs {lt}");
    }

    /// A CUDA runtime, or None (the test is skipped) on a machine without a GPU;
    /// `TAOFLOW_REQUIRE_GPU=1` turns the skip into a failure (runs on the GPU machine).
    fn cuda_or_skip() -> Option<Runtime> {
        let require = std::env::var_os("TAOFLOW_REQUIRE_GPU").is_some();
        if !crate::cuda::driver_present() {
            assert!(!require, "TAOFLOW_REQUIRE_GPU is set but there is no CUDA driver");
            eprintln!("skipping: no GPU");
            return None;
        }
        match Runtime::cuda(0, Precision::Fp32, None) {
            Ok(rt) => Some(rt),
            Err(e) => {
                assert!(!require, "{e}");
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    /// Our depthwise kernels (kernels/depthwise.cu) against cuDNN's convolution: output,
    /// input gradient and weight gradient, in f32 and under bf16 autocast, over the paths
    /// the kernels take (3x3 strips at stride 1 and 2 with widths off the strip, 16-byte
    /// vectors, scalar channels, kernels over 3x3, asymmetric padding, an NCHW input,
    /// MobileNetV2 sizes); the f32 outputs also against libtorch's CPU convolution. GPU only.
    #[test]
    fn depthwise_kernels_match_cudnn() {
        let Some(rt) = cuda_or_skip() else { return };
        let dev = rt.device;
        // n, c, h, w, k, stride, pad [t, l, b, r], channels-last input
        let cases: [(i64, i64, i64, i64, i64, i64, [i64; 4], bool); 10] = [
            (2, 32, 17, 13, 3, 1, [1, 1, 1, 1], true),
            (2, 16, 9, 11, 3, 2, [1, 1, 1, 1], true),
            (3, 8, 6, 5, 3, 1, [0, 0, 0, 0], true),
            (16, 32, 112, 112, 3, 1, [1, 1, 1, 1], true),
            (3, 24, 16, 16, 3, 2, [0, 0, 1, 1], true),
            (2, 7, 9, 11, 3, 2, [1, 1, 1, 1], true),
            (2, 16, 12, 12, 5, 1, [2, 2, 2, 2], true),
            (2, 12, 10, 10, 7, 2, [3, 3, 3, 3], false),
            (128, 144, 56, 56, 3, 2, [1, 1, 1, 1], true),
            (128, 960, 7, 7, 3, 1, [1, 1, 1, 1], true),
        ];
        tch::manual_seed(7);
        for bf16 in [false, true] {
            for &(n, c, h, w, k, s, pad, cl) in &cases {
                let x0 = Tensor::randn([n, c, h, w], (Kind::Float, dev));
                let x0 = if cl { to_channels_last(&x0).unwrap() } else { x0 };
                let w0 = to_channels_last(&Tensor::randn([c, 1, k, k], (Kind::Float, dev))).unwrap();
                let run = |ours: bool| -> (Tensor, Tensor, Tensor, Tensor) {
                    let x = x0.detach().set_requires_grad(true);
                    let wt = w0.detach().set_requires_grad(true);
                    if bf16 {
                        check(unsafe { ffi::tf_autocast(1, 1) }).unwrap();
                    }
                    let y = if ours {
                        depthwise(&x, &wt, [s, s], pad).unwrap().expect("our kernels apply")
                    } else {
                        let [t, l, b, r] = pad;
                        x.constant_pad_nd([l, r, t, b]).conv2d(&wt, None::<Tensor>, [s, s], [0, 0], [1, 1], c)
                    };
                    if bf16 {
                        check(unsafe { ffi::tf_autocast(0, 1) }).unwrap();
                    }
                    let g = Tensor::randn(y.size(), (Kind::Float, dev)).g_mul_scalar(0.1);
                    (y.to_kind(Kind::Float) * &g).sum(Kind::Float).backward();
                    (y, x.grad(), wt.grad(), g)
                };
                let (y1, gx1, gw1, _) = {
                    tch::manual_seed(11);
                    run(true)
                };
                let (y2, gx2, gw2, _) = {
                    tch::manual_seed(11);
                    run(false)
                };
                let what = format!("n{n} c{c} {h}x{w} k{k} s{s} pad{pad:?} bf16={bf16}");
                if !bf16 {
                    // and against libtorch's CPU convolution
                    let [t, l, b, r] = pad;
                    let yc = x0.to_device(Device::Cpu).constant_pad_nd([l, r, t, b]).conv2d(&w0.to_device(Device::Cpu), None::<Tensor>, [s, s], [0, 0], [1, 1], c);
                    let r = rel(&to_vec(&y1).unwrap(), &to_vec(&yc).unwrap());
                    assert!(r < 1e-5, "{what}: output differs from libtorch's CPU convolution by {r}");
                }
                assert_eq!(y1.size(), y2.size(), "{what}");
                assert_eq!(y1.kind(), y2.kind(), "{what}: output dtype");
                let tol = if bf16 { 2e-2 } else { 1e-5 };
                for (name, a, b) in [("output", &y1, &y2), ("input grad", &gx1, &gx2), ("weight grad", &gw1, &gw2)] {
                    let (a, b) = (to_vec(a).unwrap(), to_vec(b).unwrap());
                    let r = rel(&a, &b);
                    assert!(r < tol, "{what}: {name} differs from cuDNN by {r} (relative to its max)");
                }
            }
        }
    }

    /// Inference with each depthwise convolution's batch norm and ReLU6 fused into our kernel
    /// against the same layers one by one (MobileNetV2, random weights and running
    /// statistics, input 64²), f32 and under bf16 autocast. GPU only.
    #[test]
    fn fused_depthwise_inference_matches_the_layers() {
        let Some(rt) = cuda_or_skip() else { return };
        let g = crate::model::builders::by_name("mobilenet_v2", 1.0, crate::data::image_io::InputSpec::imagenet(64, 64), vec!["a".into(), "b".into(), "c".into()]).unwrap();
        let w = testutil::random_weights(&g, 6);
        let mut net = TorchNet::new(&g, &w, &|_| false, &rt).unwrap();
        tch::manual_seed(3);
        let x = to_channels_last(&Tensor::randn([8, 3, 64, 64], (Kind::Float, rt.device))).unwrap();
        for bf16 in [false, true] {
            let run_with = |net: &TorchNet, cache: Option<&InferCache>| -> Vec<f32> {
                let _g = tch::no_grad_guard();
                if bf16 {
                    check(unsafe { ffi::tf_autocast(1, 1) }).unwrap();
                }
                let y = net.forward_with(&x, false, cache);
                if bf16 {
                    check(unsafe { ffi::tf_autocast(0, 1) }).unwrap();
                }
                to_vec(&y.unwrap()).unwrap()
            };
            let run = |net: &TorchNet| run_with(net, None);
            net.fuse_depthwise = true;
            let before = DW_FUSED.with(|n| n.get());
            let fused = run(&net);
            // MobileNetV2's 17 depthwise convolutions, each followed by batch norm and ReLU6
            assert_eq!(DW_FUSED.with(|n| n.get()) - before, 17, "bf16={bf16}: every depthwise layer fused");
            // The engine's inference cache (folded batch norms, bf16 kernels) changes nothing.
            let cache = net.infer_cache(bf16).unwrap();
            assert_eq!(cache.dw_bn.len(), 17);
            let cached = run_with(&net, Some(&cache));
            assert_eq!(DW_FUSED.with(|n| n.get()) - before, 34, "bf16={bf16}: fused with the cache too");
            let r = rel(&cached, &fused);
            assert!(r < 1e-5, "bf16={bf16}: cached folds differ from folding at the call by {r}");
            net.fuse_depthwise = false;
            let layers = run(&net);
            let r = rel(&fused, &layers);
            let tol = if bf16 { 3e-2 } else { 1e-4 };
            assert!(r < tol, "bf16={bf16}: fused logits differ from the layers' by {r} (relative to their max)");
            assert!(fused.iter().all(|v| v.is_finite()));
        }
    }

    /// The automatic depthwise policy's arithmetic (the switch itself needs a GPU): MobileNetV2
    /// has 10 distinct depthwise convolutions, ResNet-18 none; at the measured step times
    /// (19.3 ms bf16, 22.9 ms tf32 on our kernels, batch 128 at 224²) a run of 300 steps
    /// stays on our kernels and one of 100,000 moves to cuDNN.
    #[test]
    fn depthwise_policy_weighs_compilation_against_steps_left() {
        let rt = Runtime::cpu();
        let kinds = |arch: &str| {
            let g = crate::model::builders::by_name(arch, 1.0, crate::data::image_io::InputSpec::imagenet(64, 64), vec!["a".into(), "b".into()]).unwrap();
            TorchNet::new(&g, &testutil::random_weights(&g, 1), &|_| false, &rt).unwrap().depthwise_kinds()
        };
        assert_eq!(kinds("mobilenet_v2"), 10);
        assert_eq!(kinds("resnet18"), 0);
        for (p, t) in [(Precision::Bf16, 0.0193), (Precision::Tf32, 0.0229)] {
            assert!(!cudnn_pays(287, t, 10, p), "{p:?}: a short run stays on our kernels");
            assert!(cudnn_pays(99_987, t, 10, p), "{p:?}: a long run moves to cuDNN");
        }
        // the threshold: bf16 needs about 20,700 steps left at 19.3 ms, tf32 about 52,400 at 22.9 ms
        assert!(!cudnn_pays(20_500, 0.0193, 10, Precision::Bf16) && cudnn_pays(21_000, 0.0193, 10, Precision::Bf16));
        assert!(!cudnn_pays(52_000, 0.0229, 10, Precision::Tf32) && cudnn_pays(53_000, 0.0229, 10, Precision::Tf32));
    }
}
