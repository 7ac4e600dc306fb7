//! Tensor layout (storage offset, shape, strides) of a PyTorch checkpoint, read from its
//! pickle stream: burn-store 0.21 reads tensor data as if every tensor were contiguous,
//! which scrambles tensors saved with permuted strides (the EfficientNet-Lite0 port stores
//! its kernels in TensorFlow's HWIO order behind OIHW strides). A small pickle machine
//! here records each tensor's strides so that `import` can put the elements in order.
//!
//! Handles both formats: the zip archive (`archive/data.pkl`) and the legacy stream (magic
//! number, protocol, system info, then the object pickle).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// One tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorLayout {
    pub storage: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorLayout {
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (s, st) in self.shape.iter().zip(&self.stride).rev() {
            if *s != 1 && *st != expect {
                return false;
            }
            expect *= s;
        }
        true
    }
}

#[derive(Debug, Clone)]
#[allow(dead_code)] // fields kept for debugging output
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes,
    Tuple(Vec<Obj>),
    List(Vec<Obj>),
    Dict(Vec<(Obj, Obj)>),
    Global(String, String),
    Persid(Box<Obj>),
    Tensor(TensorLayout),
    Call(Box<Obj>, Box<Obj>),
    Mark,
}

fn int(o: &Obj) -> Option<i64> {
    match o {
        Obj::Int(i) => Some(*i),
        Obj::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

fn ints(o: &Obj) -> Option<Vec<usize>> {
    match o {
        Obj::Tuple(v) | Obj::List(v) => v.iter().map(|x| int(x).map(|i| i as usize)).collect(),
        _ => None,
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
fn rebuild(args: &Obj) -> Option<Obj> {
    let Obj::Tuple(a) = args else { return None };
    let Obj::Persid(pid) = a.first()? else { return None };
    let Obj::Tuple(p) = pid.as_ref() else { return None };
    let storage = match p.get(2)? {
        Obj::Str(s) => s.clone(),
        Obj::Int(i) => i.to_string(),
        _ => return None,
    };
    Some(Obj::Tensor(TensorLayout { storage, offset: int(a.get(1)?)? as usize, shape: ints(a.get(2)?)?, stride: ints(a.get(3)?)? }))
}

struct Machine<'a> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<Obj>,
    memo: HashMap<u32, Obj>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.b.get(self.pos..self.pos + n).ok_or("truncated pickle")?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        while *self.b.get(self.pos).ok_or("truncated pickle")? != b'\n' {
            self.pos += 1;
        }
        let s = String::from_utf8_lossy(&self.b[start..self.pos]).to_string();
        self.pos += 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Obj, String> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn pop_mark(&mut self) -> Result<Vec<Obj>, String> {
        let at = self.stack.iter().rposition(|o| matches!(o, Obj::Mark)).ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Obj, String> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn set_items(&mut self, items: Vec<Obj>) -> Result<(), String> {
        let top = self.top()?;
        let target = match top {
            Obj::Dict(d) => d,
            Obj::Call(f, _) if matches!(f.as_ref(), Obj::Global(_, n) if n == "OrderedDict") => {
                *top = Obj::Dict(Vec::new());
                let Obj::Dict(d) = top else { unreachable!() };
                d
            }
            _ => return Ok(()),
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            target.push((k, v));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Obj, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'}' => self.stack.push(Obj::Dict(Vec::new())),
                b']' => self.stack.push(Obj::List(Vec::new())),
                b')' => self.stack.push(Obj::Tuple(Vec::new())),
                b'(' => self.stack.push(Obj::Mark),
                b't' => {
                    let v = self.pop_mark()?;
                    self.stack.push(Obj::Tuple(v))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self.stack.len().checked_sub(n).ok_or("pickle stack underflow")?;
                    let v = self.stack.split_off(at);
                    self.stack.push(Obj::Tuple(v));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.stack.push(self.memo.get(&k).cloned().ok_or("pickle memo miss")?);
                }
                b'j' => {
                    let k = self.u32()?;
                    self.stack.push(self.memo.get(&k).cloned().ok_or("pickle memo miss")?);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).to_string();
                    self.stack.push(Obj::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).to_string();
                    self.stack.push(Obj::Str(s));
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")) as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).to_string();
                    self.stack.push(Obj::Str(s));
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let raw = self.take(n)?;
                    self.stack.push(if op == b'U' { Obj::Str(String::from_utf8_lossy(raw).to_string()) } else { Obj::Bytes });
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let raw = self.take(n)?;
                    self.stack.push(if op == b'T' { Obj::Str(String::from_utf8_lossy(raw).to_string()) } else { Obj::Bytes });
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.stack.push(Obj::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Obj::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                    self.stack.push(Obj::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let raw = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, b) in raw.iter().enumerate().take(8) {
                        v |= (*b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && raw[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Obj::Int(v));
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let l = l.trim_end_matches('L');
                    self.stack.push(match l {
                        "00" => Obj::Bool(false),
                        "01" => Obj::Bool(true),
                        _ => Obj::Int(l.parse().map_err(|_| format!("bad pickle integer `{l}`"))?),
                    });
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Obj::Float(v));
                }
                b'N' => self.stack.push(Obj::None),
                0x88 => self.stack.push(Obj::Bool(true)),
                0x89 => self.stack.push(Obj::Bool(false)),
                b'c' => {
                    let m = self.line()?;
                    let n = self.line()?;
                    self.stack.push(Obj::Global(m, n));
                }
                0x93 => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (m, n) {
                        (Obj::Str(m), Obj::Str(n)) => self.stack.push(Obj::Global(m, n)),
                        _ => return Err("bad STACK_GLOBAL".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Obj::Persid(Box::new(pid)));
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let out = match &f {
                        Obj::Global(_, n) if n.starts_with("_rebuild_tensor") => rebuild(&args).ok_or("cannot read a tensor's layout")?,
                        Obj::Global(_, n) if n == "_rebuild_parameter" => match &args {
                            Obj::Tuple(a) if !a.is_empty() => a[0].clone(),
                            _ => Obj::None,
                        },
                        _ => Obj::Call(Box::new(f), Box::new(args)),
                    };
                    self.stack.push(out);
                }
                b'b' => {
                    self.pop()?; // state: metadata of OrderedDicts and modules
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Obj::List(l) = self.top()? {
                        l.push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Obj::List(l) = self.top()? {
                        l.extend(items);
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'.' => return self.pop(),
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1)),
            }
        }
    }
}

fn collect(o: &Obj, prefix: &str, out: &mut HashMap<String, TensorLayout>) {
    match o {
        Obj::Dict(d) => {
            for (k, v) in d {
                if let Obj::Str(k) = k {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    match v {
                        Obj::Tensor(t) => {
                            out.insert(name, t.clone());
                        }
                        Obj::Dict(_) if k == "state_dict" || k == "model" || k == "model_state_dict" => collect(v, prefix, out),
                        _ => {}
                    }
                }
            }
        }
        Obj::Call(f, _) if matches!(f.as_ref(), Obj::Global(_, n) if n == "OrderedDict") => {}
        _ => {}
    }
}

fn parse(pickle: &[u8], skip: usize) -> Result<HashMap<String, TensorLayout>, String> {
    let mut m = Machine { b: pickle, pos: 0, stack: Vec::new(), memo: HashMap::new() };
    for _ in 0..skip {
        m.run()?;
        m.stack.clear();
        m.memo.clear();
    }
    let top = m.run()?;
    let mut out = HashMap::new();
    collect(&top, "", &mut out);
    Ok(out)
}

/// The layout of every tensor in a `.pt`/`.pth` file, by state-dict key.
pub fn layouts(path: &Path) -> Result<HashMap<String, TensorLayout>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if bytes.starts_with(b"PK") {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).map_err(|e| format!("`{}`: {e}", path.display()))?;
        let name = (0..z.len()).filter_map(|i| z.by_index(i).ok().map(|f| f.name().to_string())).find(|n| n.ends_with("data.pkl")).ok_or_else(|| format!("`{}` has no data.pkl", path.display()))?;
        let mut f = z.by_name(&name).map_err(|e| e.to_string())?;
        let mut pk = Vec::new();
        f.read_to_end(&mut pk).map_err(|e| e.to_string())?;
        parse(&pk, 0)
    } else {
        // Legacy: magic number, protocol version, system info, then the objects.
        parse(&bytes, 3)
    }
}

/// Put the elements of a tensor read as `numel` contiguous values from its storage offset
/// into row-major order, following its strides. Errors for views that skip storage.
pub fn reorder(raw: &[f32], l: &TensorLayout) -> Result<Vec<f32>, String> {
    let n: usize = l.shape.iter().product();
    let reach: usize = l.shape.iter().zip(&l.stride).map(|(s, st)| s.saturating_sub(1) * st).sum();
    if raw.len() != n || reach >= n.max(1) {
        return Err("a tensor is a strided view into a larger storage; save it with `.contiguous()`".into());
    }
    let mut out = vec![0f32; n];
    let mut idx = vec![0usize; l.shape.len()];
    for o in out.iter_mut() {
        let src: usize = idx.iter().zip(&l.stride).map(|(i, s)| i * s).sum();
        *o = raw[src];
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < l.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity_and_reorder() {
        let c = TensorLayout { storage: "0".into(), offset: 0, shape: vec![2, 3], stride: vec![3, 1] };
        assert!(c.is_contiguous());
        // A transposed 2x3 (stored as 3x2 row-major).
        let t = TensorLayout { storage: "0".into(), offset: 0, shape: vec![2, 3], stride: vec![1, 2] };
        assert!(!t.is_contiguous());
        let raw = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert_eq!(reorder(&raw, &t).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let view = TensorLayout { storage: "0".into(), offset: 0, shape: vec![2], stride: vec![3] };
        assert!(reorder(&[1.0, 2.0], &view).is_err());
    }
}
