//! `webdiffusion info --model PACKAGE`: loads a package onto the GPU (timed) and
//! prints what it holds, per component and storage type, and how it previews.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use webdiffusion::Result;
use webdiffusion::gpu::Gpu;
use webdiffusion::package::{DirSource, load_package};
use webdiffusion::pipeline::MIN_EXPLAINED;

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
    match &manifest.latent_rgb {
        Some(map) => {
            let explained = map.explained.map_or_else(|| "fit not measured".to_string(), |e| format!("explains {:.1}%", 100.0 * e));
            let use_it = if map.explained.is_some_and(|e| e < MIN_EXPLAINED) { "previews decode with the VAE" } else { "previews use it" };
            println!("  preview map: {explained} of the colour variance; {use_it}");
        }
        None => println!("  preview map: none stored (fitted at load)"),
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
