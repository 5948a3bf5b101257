//! `webdiffusion info --model PACKAGE`: loads a package onto the GPU (timed) and
//! prints what it holds, per component and storage type.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use webdiffusion::Result;
use webdiffusion::gpu::Gpu;
use webdiffusion::package::{DirSource, load_package};

pub async fn run(gpu: &Gpu, path: &Path) -> Result<()> {
    let start = Instant::now();
    let package = load_package(gpu, &DirSource::new(path)?, &mut |_| {}).await?;
    gpu.finish().await?;
    let seconds = start.elapsed().as_secs_f64();
    let manifest = package.manifest();
    println!("{}: {} ({}), {}", path.display(), manifest.name, manifest.family, manifest.source);
    let mut sizes: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for tensor in &manifest.tensors {
        *sizes.entry(tensor.component.as_str()).or_default().entry(tensor.dtype.as_str()).or_default() += tensor.length;
    }
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    for (component, types) in &sizes {
        let types: Vec<String> = types.iter().map(|(dtype, bytes)| format!("{dtype} {:.1} MiB", mib(*bytes))).collect();
        println!("  {component}: {}", types.join(", "));
    }
    let total = manifest.stream_bytes();
    println!("  {} shards, {:.1} MiB, loaded in {seconds:.2} s ({:.0} MiB/s)", manifest.shards.len(), mib(total), mib(total) / seconds);
    // Linux reports the peak resident set; with a CPU Vulkan driver it includes the
    // "GPU" memory, which is host memory there.
    if let Some(peak) =
        std::fs::read_to_string("/proc/self/status").ok().and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
    {
        println!("  peak resident memory: {}", peak.trim_start_matches("VmHWM:").trim());
    }
    Ok(())
}
