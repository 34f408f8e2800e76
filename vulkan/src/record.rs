//! Recording dispatches, optionally with a GPU timestamp after each one.
//!
//! Every kernel launch of the forward pass goes through [`Recorder::dispatch`], which names
//! it. With a [`Timer`] attached (benchmarks only), a timestamp is written after each
//! dispatch inside the pass (wgpu `TIMESTAMP_QUERY_INSIDE_PASSES`), so the interval between
//! two timestamps is that dispatch's time on the GPU including the barrier before it. The
//! recording is otherwise identical, so the profile shows the same work as a normal step.

use crate::{Gpu, VulkanError};

/// Timestamps written between dispatches, with the name of the interval each one closes.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    capacity: u32,
    labels: Vec<&'static str>,
}

impl Timer {
    /// A timer for up to `capacity` timestamps, or `None` when the device cannot write
    /// timestamps inside passes.
    pub fn new(gpu: &Gpu, capacity: u32) -> Option<Timer> {
        if !gpu.timestamps() {
            return None;
        }
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        Some(Timer {
            set,
            capacity,
            labels: Vec::new(),
        })
    }

    fn mark(&mut self, pass: &mut wgpu::ComputePass<'_>, label: &'static str) {
        let index = self.labels.len() as u32;
        if index < self.capacity {
            pass.write_timestamp(&self.set, index);
            self.labels.push(label);
        }
    }

    /// Reads the timestamps back (after the recorded work was submitted) and returns the
    /// seconds of each interval with its label; the first label (the pass start) has none.
    pub fn read(self, gpu: &Gpu) -> Result<Vec<(&'static str, f64)>, VulkanError> {
        let n = self.labels.len() as u32;
        if n < 2 {
            return Ok(Vec::new());
        }
        let bytes = n as u64 * 8;
        let resolved = gpu.buffer_query_resolve("timestamps", bytes)?;
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timestamps"),
            });
        enc.resolve_query_set(&self.set, 0..n, &resolved, 0);
        gpu.queue.submit([enc.finish()]);
        let raw = gpu.read_back(&resolved, bytes)?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period_s = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok((1..n as usize)
            .map(|i| {
                (
                    self.labels[i],
                    ticks[i].saturating_sub(ticks[i - 1]) as f64 * period_s,
                )
            })
            .collect())
    }
}

/// One compute pass being recorded.
pub(crate) struct Recorder<'a, 'p> {
    pass: &'a mut wgpu::ComputePass<'p>,
    timer: Option<&'a mut Timer>,
    dispatched: usize,
}

impl<'a, 'p> Recorder<'a, 'p> {
    /// Starts recording into `pass`; with a timer, writes the timestamp that the first
    /// dispatch's interval starts from (labelled `start`: the gap since the previous pass).
    pub fn new(
        pass: &'a mut wgpu::ComputePass<'p>,
        mut timer: Option<&'a mut Timer>,
        start: &'static str,
    ) -> Recorder<'a, 'p> {
        if let Some(t) = timer.as_deref_mut() {
            t.mark(pass, start);
        }
        Recorder {
            pass,
            timer,
            dispatched: 0,
        }
    }

    /// Dispatches recorded so far.
    pub fn dispatched(&self) -> usize {
        self.dispatched
    }

    /// Records one kernel launch named `label`.
    pub fn dispatch(
        &mut self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        groups: [u32; 3],
    ) {
        self.pass.set_pipeline(pipeline);
        self.pass.set_bind_group(0, bind_group, &[]);
        self.pass
            .dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.dispatched += 1;
        if let Some(t) = self.timer.as_deref_mut() {
            t.mark(self.pass, label);
        }
    }
}
