//! GPUs on this machine, and leases of them to stages.

use std::sync::Mutex;

use tokio::sync::Notify;

/// GPU ordinals present. `TAOFLOW_GPUS` overrides detection (`0,1`, or `none`); otherwise
/// `CUDA_VISIBLE_DEVICES` narrows what the NVIDIA driver shows in `/proc/driver/nvidia/gpus`.
pub fn detect() -> Vec<u32> {
    if let Ok(v) = std::env::var("TAOFLOW_GPUS") {
        return parse_list(&v);
    }
    let count = std::fs::read_dir("/proc/driver/nvidia/gpus").map(|rd| rd.flatten().count()).unwrap_or(0) as u32;
    let all: Vec<u32> = (0..count).collect();
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => parse_list(&v).into_iter().filter(|g| all.contains(g)).collect(),
        Err(_) => all,
    }
}

fn parse_list(v: &str) -> Vec<u32> {
    let v = v.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("none") {
        return Vec::new();
    }
    let mut out: Vec<u32> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    out.dedup();
    out
}

/// Hands GPU ordinals out to stages; a stage waits until enough are free.
#[derive(Debug)]
pub struct GpuPool {
    all: Vec<u32>,
    free: Mutex<Vec<u32>>,
    notify: Notify,
}

/// GPUs held by a stage; returned to the pool when dropped.
#[derive(Debug)]
pub struct GpuLease<'a> {
    pool: &'a GpuPool,
    pub ids: Vec<u32>,
}

impl GpuPool {
    pub fn new(all: Vec<u32>) -> Self {
        GpuPool { free: Mutex::new(all.clone()), all, notify: Notify::new() }
    }

    pub fn total(&self) -> usize {
        self.all.len()
    }

    /// Wait until `n` GPUs are free and take them. `n` must be at most `total()`.
    pub async fn acquire(&self, n: usize) -> GpuLease<'_> {
        loop {
            let notified = self.notify.notified();
            {
                let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
                if free.len() >= n {
                    let ids: Vec<u32> = free.drain(..n).collect();
                    return GpuLease { pool: self, ids };
                }
            }
            notified.await;
        }
    }
}

impl Drop for GpuLease<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.append(&mut self.ids);
        free.sort_unstable();
        drop(free);
        self.pool.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(parse_list("0,1, 3"), vec![0, 1, 3]);
        assert_eq!(parse_list("none"), Vec::<u32>::new());
        assert_eq!(parse_list(""), Vec::<u32>::new());
    }

    #[tokio::test]
    async fn leases_are_exclusive() {
        let pool = GpuPool::new(vec![0, 1]);
        let a = pool.acquire(1).await;
        let b = pool.acquire(1).await;
        assert_ne!(a.ids, b.ids);
        let waiter = async { pool.acquire(2).await.ids.clone() };
        drop(a);
        drop(b);
        assert_eq!(waiter.await, vec![0, 1]);
    }
}
