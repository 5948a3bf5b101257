//! Compiled pipelines, cached by everything that changes the compiled code.

use std::collections::HashMap;
use std::sync::Arc;

use super::batch::Access;
use super::preprocess::preprocess;
use crate::error::Result;

/// Names one compiled variant of a shader: file, entry point, defines, and the
/// access of each storage binding (binding 0 is always the uniform parameters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub shader: &'static str,
    pub entry: &'static str,
    pub defines: Vec<(&'static str, String)>,
    pub bindings: Vec<Access>,
}

impl KernelKey {
    /// The preprocessed WGSL this key compiles.
    pub fn source(&self) -> Result<String> {
        preprocess(self.shader, &self.defines)
    }
}

pub(super) struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(super) struct KernelCache {
    compiled: HashMap<KernelKey, Arc<Compiled>>,
}

impl KernelCache {
    /// How many pipelines have been compiled.
    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    pub fn get(&mut self, device: &wgpu::Device, key: &KernelKey) -> Result<Arc<Compiled>> {
        if let Some(found) = self.compiled.get(key) {
            return Ok(found.clone());
        }
        let source = key.source()?;
        let label = format!("{}:{}", key.shader, key.entry);
        let module = device
            .create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(&label), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: true, min_binding_size: None },
            count: None,
        }];
        for (i, access) in key.bindings.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: *access == Access::Read },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(key.entry),
            // Every kernel writes its workgroup memory before reading it.
            compilation_options: wgpu::PipelineCompilationOptions { constants: &[], zero_initialize_workgroup_memory: false },
            cache: None,
        });
        let compiled = Arc::new(Compiled { pipeline, layout });
        self.compiled.insert(key.clone(), compiled.clone());
        Ok(compiled)
    }
}
