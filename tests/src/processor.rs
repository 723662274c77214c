//! An activated, processing instance with preallocated audio and event buffers.
//!
//! Nothing here allocates per block, so the debug bundle's `assert_process_allocs` only ever
//! sees the plugin's own behaviour.

use anyhow::{Result, anyhow, bail};
use clack_host::events::event_types::{ParamValueEvent, TransportEvent};
use clack_host::prelude::*;

use crate::host::Host;

/// A parameter change to deliver inside a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamChange {
    /// Sample offset inside the block.
    pub offset: u32,
    /// CLAP parameter id.
    pub id: u32,
    /// New plain value.
    pub value: f64,
}

/// A parameter event from the plugin to the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutParamEvent {
    /// Gesture begin (CLAP id).
    Begin(u32),
    /// New value (CLAP id, value).
    Value(u32, f64),
    /// Gesture end (CLAP id).
    End(u32),
}

/// An instance's audio processor plus its buffers.
pub struct Processor {
    inner: StartedPluginAudioProcessor<Host>,
    sample_rate: f64,
    max_block: u32,
    input_ports: AudioPorts,
    output_ports: AudioPorts,
    inputs: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
    in_events: EventBuffer,
    out_events: EventBuffer,
    steady_time: u64,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("sample_rate", &self.sample_rate)
            .field("max_block", &self.max_block)
            .field("channels", &self.inputs.len())
            .finish_non_exhaustive()
    }
}

impl Processor {
    pub(crate) fn new(
        inner: StartedPluginAudioProcessor<Host>,
        sample_rate: f64,
        max_block: u32,
        channels: usize,
    ) -> Self {
        let frames = max_block as usize;
        Self {
            inner,
            sample_rate,
            max_block,
            input_ports: AudioPorts::with_capacity(channels, 1),
            output_ports: AudioPorts::with_capacity(channels, 1),
            inputs: vec![vec![0.0; frames]; channels],
            outputs: vec![vec![0.0; frames]; channels],
            in_events: EventBuffer::with_capacity(64),
            out_events: EventBuffer::with_capacity(64),
            steady_time: 0,
        }
    }

    pub(crate) fn into_inner(self) -> StartedPluginAudioProcessor<Host> {
        self.inner
    }

    /// Sample rate the instance was activated at.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }

    /// Largest block the instance accepts.
    pub fn max_block(&self) -> u32 {
        self.max_block
    }

    /// Parameter events the plugin sent the host in the last block, in order.
    pub fn out_param_events(&self) -> Vec<OutParamEvent> {
        use clack_host::events::spaces::CoreEventSpace;
        self.out_events
            .iter()
            .filter_map(|e| match e.as_core_event()? {
                CoreEventSpace::ParamGestureBegin(g) => {
                    Some(OutParamEvent::Begin(g.param_id()?.get()))
                }
                CoreEventSpace::ParamValue(v) => {
                    Some(OutParamEvent::Value(v.param_id()?.get(), v.value()))
                }
                CoreEventSpace::ParamGestureEnd(g) => Some(OutParamEvent::End(g.param_id()?.get())),
                _ => None,
            })
            .collect()
    }

    /// The sample offsets (event times) of the value events for parameter `id` in the last
    /// block.
    pub fn out_param_value_times(&self, id: u32) -> Vec<u32> {
        use clack_host::events::spaces::CoreEventSpace;
        self.out_events
            .iter()
            .filter_map(|e| match e.as_core_event()? {
                CoreEventSpace::ParamValue(v) if v.param_id()?.get() == id => {
                    Some(v.header().time())
                }
                _ => None,
            })
            .collect()
    }

    /// Samples processed since activation (the CLAP steady time of the next block).
    pub fn steady_time(&self) -> u64 {
        self.steady_time
    }

    /// Input channel `ch`, to fill before [`Processor::process`] (full `max_block` length).
    pub fn input_mut(&mut self, ch: usize) -> &mut [f32] {
        &mut self.inputs[ch]
    }

    /// Output channel `ch` after the last [`Processor::process`], first `len` samples valid.
    pub fn output(&self, ch: usize) -> &[f32] {
        &self.outputs[ch]
    }

    /// Process `len` frames with the given transport and parameter changes. Input and output
    /// are separate buffers (not in place), as many hosts do.
    pub fn process(
        &mut self,
        len: u32,
        transport: Option<&TransportEvent>,
        params: &[ParamChange],
    ) -> Result<ProcessStatus> {
        if len == 0 || len > self.max_block {
            bail!("block of {len} frames outside 1..={}", self.max_block);
        }
        let frames = len as usize;
        self.in_events.clear();
        self.out_events.clear();
        for change in params {
            let id = ClapId::from_raw(change.id).ok_or_else(|| anyhow!("bad param id"))?;
            let event = ParamValueEvent::new(change.offset, id, Pckn::match_all(), change.value);
            self.in_events.push(&event);
        }
        let input = self.input_ports.with_input_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_input_only(
                self.inputs
                    .iter_mut()
                    .map(|b| InputChannel::variable(&mut b[..frames])),
            ),
        }]);
        let mut output = self.output_ports.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only(
                self.outputs.iter_mut().map(|b| &mut b[..frames]),
            ),
        }]);
        let status = self
            .inner
            .process(
                &input,
                &mut output,
                &InputEvents::from_buffer(&self.in_events),
                &mut OutputEvents::from_buffer(&mut self.out_events),
                Some(self.steady_time),
                transport,
            )
            .map_err(|e| anyhow!("process: {e:?}"))?;
        self.steady_time += u64::from(len);
        Ok(status)
    }
}
