//! Lockstep's CLAP entry point: nice-plug's CLAP wrapper inside a thin layer of our own that
//! lets remote control (OSC) change parameters the way a host-side controller would.
//!
//! nice-plug 0.4 lets a plugin tell the host about a parameter change only through the
//! `GuiContext` an editor receives, and has no public way to set a parameter from inside the
//! plugin. So the layer sits between host and wrapper, in `process()`:
//!
//! - changes the worker queued for this instance (lock-free `rtrb`, no allocation) join the
//!   host's input events as `CLAP_EVENT_PARAM_VALUE`, so nice-plug applies them exactly as it
//!   applies host automation: at once, or, for OSC bundles with a future time tag, at the
//!   sample the worker computed (held here until their block, merged in time order);
//! - the same changes go to the host's output events as gesture begin / value / gesture end,
//!   so the DAW moves its own view of the parameter and can record automation, editor open or
//!   not. A gesture stays open while changes keep coming and ends 250 ms after the last.
//!
//! Everything else is nice-plug's own `clap_plugin`: our outer `clap_plugin` is a copy of it
//! (its `plugin_data` is the wrapper, so every extension nice-plug exposes works unchanged)
//! with `activate`, `start_processing`, `reset`, `process` and `destroy` replaced. VST3 goes through nice-plug unchanged,
//! without this (see the README).

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_void};
use std::ptr;
use std::sync::{Arc, OnceLock};

use clap_sys::events::{
    CLAP_CORE_EVENT_SPACE_ID, CLAP_EVENT_PARAM_GESTURE_BEGIN, CLAP_EVENT_PARAM_GESTURE_END,
    CLAP_EVENT_PARAM_VALUE, clap_event_header, clap_event_param_gesture, clap_event_param_value,
    clap_input_events,
};
use clap_sys::plugin::clap_plugin;
use clap_sys::process::{CLAP_PROCESS_ERROR, clap_process, clap_process_status};
use lockstep_net::params::HostParamChange;
use nice_plug::wrapper::clap::{
    CLAP_PLUGIN_FACTORY_ID, CLAP_VERSION, PluginDescriptor, Wrapper, clap_host,
    clap_plugin_descriptor, clap_plugin_entry, clap_plugin_factory,
};
use nice_plug::wrapper::setup_logger;

use crate::Lockstep;

/// Most remote changes taken into one block (the rest wait for the next one).
const MAX_PER_BLOCK: usize = 64;
/// Timed changes held for a later block.
const MAX_PENDING: usize = 64;
/// Host input events we can interleave our timed ones with (beyond this, ours go first at
/// time 0).
const MAX_MERGED: usize = 2048;
/// Marks an index into our own events in the merged order.
const OURS: u32 = 1 << 31;
/// Parameters with an open gesture at once (more are sent as begin/value/end at once).
const MAX_GESTURES: usize = 16;
/// A gesture ends this long after the parameter's last remote change.
const GESTURE_HOLD_SECONDS: f64 = 0.25;

/// Queue capacity between the worker and one instance's shim.
pub const INBOX_CAPACITY: usize = 1024;

thread_local! {
    /// The consumer end created by the latest `Lockstep::default()` on this thread, for the
    /// shim that is constructing that very instance (same thread, synchronously).
    static NEW_INBOX: RefCell<Option<rtrb::Consumer<HostParamChange>>> =
        const { RefCell::new(None) };
}

/// Called by `Lockstep::default()`: hand the consumer end to the shim being built.
pub(crate) fn offer_inbox(consumer: rtrb::Consumer<HostParamChange>) {
    NEW_INBOX.with(|slot| *slot.borrow_mut() = Some(consumer));
}

fn take_inbox() -> Option<rtrb::Consumer<HostParamChange>> {
    NEW_INBOX.with(|slot| slot.borrow_mut().take())
}

/// One instance: our `clap_plugin` first (the host's pointer is a pointer to this struct).
#[repr(C)]
struct Shim {
    clap: clap_plugin,
    /// nice-plug's own `clap_plugin` (inside its wrapper, which lives as long as we do).
    inner: *const clap_plugin,
    inbox: Option<rtrb::Consumer<HostParamChange>>,
    sample_rate: f64,
    /// Open gestures: (CLAP id, samples left until it ends).
    gestures: [(u32, i64); MAX_GESTURES],
    open: usize,
    /// This block's injected changes (preallocated; `process()` never allocates).
    injected: [clap_event_param_value; MAX_PER_BLOCK],
    injected_len: usize,
    /// Timed changes for later blocks: (sample clock position, change).
    pending: [(u64, HostParamChange); MAX_PENDING],
    pending_len: usize,
    /// Samples processed since activation or reset (the plugin's own sample clock).
    clock: u64,
    /// The host's input events while the wrapper reads our merged list, and the time-sorted
    /// order of the merged list (host indices, or ours with [`OURS`] set).
    host_in: *const clap_input_events,
    order: [u32; MAX_MERGED],
    order_len: usize,
}

fn param_value(clap_id: u32, value: f64) -> clap_event_param_value {
    clap_event_param_value {
        header: clap_event_header {
            size: std::mem::size_of::<clap_event_param_value>() as u32,
            time: 0,
            space_id: CLAP_CORE_EVENT_SPACE_ID,
            type_: CLAP_EVENT_PARAM_VALUE,
            flags: 0,
        },
        param_id: clap_id,
        cookie: ptr::null_mut(),
        note_id: -1,
        port_index: -1,
        channel: -1,
        key: -1,
        value,
    }
}

fn gesture(kind: u16, clap_id: u32, time: u32) -> clap_event_param_gesture {
    clap_event_param_gesture {
        header: clap_event_header {
            size: std::mem::size_of::<clap_event_param_gesture>() as u32,
            time,
            space_id: CLAP_CORE_EVENT_SPACE_ID,
            type_: kind,
            flags: 0,
        },
        param_id: clap_id,
    }
}

/// The merged input list: our events (all at time 0) first, then the host's.
unsafe extern "C" fn merged_size(list: *const clap_input_events) -> u32 {
    // SAFETY: `ctx` is the `Shim` that built this list for the duration of one process call.
    let shim = unsafe { &*((*list).ctx as *const Shim) };
    shim.order_len as u32
}

/// The host's event count.
fn host_len(host: *const clap_input_events) -> usize {
    if host.is_null() {
        return 0;
    }
    // SAFETY: the host's list is valid for the process call.
    unsafe { (*host).size.map_or(0, |f| f(host)) as usize }
}

/// The host's event `i`.
fn host_event(host: *const clap_input_events, i: usize) -> *const clap_event_header {
    // SAFETY: the host's list is valid for the process call; `i` < its size.
    unsafe { (*host).get.map_or(ptr::null(), |f| f(host, i as u32)) }
}

unsafe extern "C" fn merged_get(
    list: *const clap_input_events,
    index: u32,
) -> *const clap_event_header {
    // SAFETY: as in `merged_size`.
    let shim = unsafe { &*((*list).ctx as *const Shim) };
    match shim.order[..shim.order_len].get(index as usize) {
        Some(&o) if o & OURS != 0 => &shim.injected[(o & !OURS) as usize].header,
        Some(&o) => host_event(shim.host_in, o as usize),
        None => ptr::null(),
    }
}

/// Take this block's changes from the queue and the held ones, put each on its sample, sort
/// them, and build the merged order with the host's events (both time-sorted).
fn prepare_block(shim: &mut Shim, frames: u32, host: *const clap_input_events) {
    let (start, end) = (shim.clock, shim.clock + u64::from(frames));
    let last = frames.saturating_sub(1);
    shim.injected_len = 0;
    let take = |shim: &mut Shim, change: HostParamChange| {
        if shim.injected_len == MAX_PER_BLOCK {
            return false;
        }
        let time = change
            .at_sample
            .map_or(0, |at| at.saturating_sub(start).min(u64::from(last)) as u32);
        let mut event = param_value(change.clap_id, change.value);
        event.header.time = time;
        shim.injected[shim.injected_len] = event;
        shim.injected_len += 1;
        true
    };
    // Held changes whose block this is.
    let mut i = 0;
    while i < shim.pending_len {
        let (at, change) = shim.pending[i];
        if at < end && take(shim, change) {
            shim.pending_len -= 1;
            shim.pending[i] = shim.pending[shim.pending_len];
        } else {
            i += 1;
        }
    }
    if let Some(mut inbox) = shim.inbox.take() {
        while shim.injected_len < MAX_PER_BLOCK {
            let Ok(change) = inbox.pop() else { break };
            match change.at_sample {
                Some(at) if at >= end && shim.pending_len < MAX_PENDING => {
                    shim.pending[shim.pending_len] = (at, change);
                    shim.pending_len += 1;
                }
                _ => {
                    take(shim, change);
                }
            }
        }
        shim.inbox = Some(inbox);
    }
    // Insertion sort by time (a handful of events).
    for i in 1..shim.injected_len {
        let mut j = i;
        while j > 0 && shim.injected[j - 1].header.time > shim.injected[j].header.time {
            shim.injected.swap(j - 1, j);
            j -= 1;
        }
    }
    // Merge with the host's events.
    let n_host = host_len(host);
    shim.order_len = 0;
    if n_host + shim.injected_len > MAX_MERGED {
        // Too many to interleave: ours first, at time 0, keeps the list sorted.
        for k in 0..shim.injected_len {
            shim.injected[k].header.time = 0;
            shim.order[shim.order_len] = OURS | k as u32;
            shim.order_len += 1;
        }
        for h in 0..n_host.min(MAX_MERGED - shim.order_len) {
            shim.order[shim.order_len] = h as u32;
            shim.order_len += 1;
        }
        return;
    }
    let (mut h, mut k) = (0, 0);
    while h < n_host || k < shim.injected_len {
        let host_time = (h < n_host).then(|| {
            let e = host_event(host, h);
            // SAFETY: a valid event header from the host's list (null checked).
            if e.is_null() { 0 } else { unsafe { (*e).time } }
        });
        let ours_first = match host_time {
            None => true,
            Some(t) => k < shim.injected_len && shim.injected[k].header.time < t,
        };
        if ours_first {
            shim.order[shim.order_len] = OURS | k as u32;
            k += 1;
        } else {
            shim.order[shim.order_len] = h as u32;
            h += 1;
        }
        shim.order_len += 1;
    }
}

unsafe extern "C" fn shim_activate(
    plugin: *const clap_plugin,
    sample_rate: f64,
    min_frames: u32,
    max_frames: u32,
) -> bool {
    // SAFETY: the host passes back the pointer we gave it: a `Shim`, main thread, not
    // processing (CLAP's activate rules).
    let shim = unsafe { &mut *(plugin as *mut Shim) };
    shim.sample_rate = sample_rate;
    shim.open = 0;
    shim.clock = 0;
    shim.pending_len = 0;
    // SAFETY: nice-plug's own function with its own plugin pointer.
    unsafe {
        (*shim.inner)
            .activate
            .is_some_and(|f| f(shim.inner, sample_rate, min_frames, max_frames))
    }
}

unsafe extern "C" fn shim_reset(plugin: *const clap_plugin) {
    // SAFETY: our pointer; CLAP calls reset on the audio thread, never during process.
    let shim = unsafe { &mut *(plugin as *mut Shim) };
    // The plugin's sample clock restarts with reset: ours follows it.
    shim.clock = 0;
    shim.pending_len = 0;
    // SAFETY: nice-plug's own function with its own plugin pointer.
    unsafe {
        if let Some(reset) = (*shim.inner).reset {
            reset(shim.inner);
        }
    }
}

unsafe extern "C" fn shim_start_processing(plugin: *const clap_plugin) -> bool {
    // SAFETY: our pointer; audio thread, before any process call of this run.
    let shim = unsafe { &mut *(plugin as *mut Shim) };
    // nice-plug resets the plugin (and so its sample clock) here: ours follows.
    shim.clock = 0;
    shim.pending_len = 0;
    // SAFETY: nice-plug's own function with its own plugin pointer.
    unsafe {
        (*shim.inner)
            .start_processing
            .is_some_and(|f| f(shim.inner))
    }
}

unsafe extern "C" fn shim_process(
    plugin: *const clap_plugin,
    process: *const clap_process,
) -> clap_process_status {
    if plugin.is_null() || process.is_null() {
        return CLAP_PROCESS_ERROR;
    }
    let shim_ptr = plugin as *mut Shim;
    // SAFETY: valid for this call (CLAP).
    let host_process = unsafe { &*process };
    {
        // SAFETY: our pointer; the audio thread is the only one touching the shim while
        // processing. This borrow ends before the wrapper can call back into `merged_*`.
        let shim = unsafe { &mut *shim_ptr };
        prepare_block(shim, host_process.frames_count, host_process.in_events);
        shim.host_in = host_process.in_events;
    }
    // SAFETY: reads of plain fields through our pointer.
    let (inner, injected) = unsafe { ((*shim_ptr).inner, (*shim_ptr).injected_len) };
    // SAFETY: nice-plug's own plugin struct.
    let Some(inner_process) = (unsafe { (*inner).process }) else {
        return CLAP_PROCESS_ERROR;
    };
    let status = if injected == 0 {
        // SAFETY: nice-plug's own function and pointer, the host's process data.
        unsafe { inner_process(inner, process) }
    } else {
        let merged = clap_input_events {
            ctx: shim_ptr as *mut c_void,
            size: Some(merged_size),
            get: Some(merged_get),
        };
        let mut ours = *host_process;
        ours.in_events = &merged;
        // SAFETY: as above; `merged` and the shim outlive the call.
        unsafe { inner_process(inner, &ours) }
    };
    // SAFETY: the wrapper's process has returned; nothing else holds the shim.
    let shim = unsafe { &mut *shim_ptr };
    shim.host_in = ptr::null();
    report_to_host(shim, host_process);
    shim.clock += u64::from(host_process.frames_count);
    status
}

/// Gesture begin / value / gesture end for this block's remote changes, and the ends of
/// gestures that went quiet.
fn report_to_host(shim: &mut Shim, process: &clap_process) {
    let out = process.out_events;
    let push = |header: *const clap_event_header| {
        if out.is_null() {
            return;
        }
        // SAFETY: the host's output list is valid for the process call.
        unsafe {
            if let Some(f) = (*out).try_push {
                f(out, header);
            }
        }
    };
    let hold = (GESTURE_HOLD_SECONDS * shim.sample_rate) as i64;
    for i in 0..shim.injected_len {
        let event = shim.injected[i];
        let id = event.param_id;
        match shim.gestures[..shim.open].iter().position(|g| g.0 == id) {
            Some(g) => {
                shim.gestures[g].1 = hold;
                push(&event.header);
            }
            None if shim.open < MAX_GESTURES => {
                push(&gesture(CLAP_EVENT_PARAM_GESTURE_BEGIN, id, event.header.time).header);
                push(&event.header);
                shim.gestures[shim.open] = (id, hold);
                shim.open += 1;
            }
            None => {
                let t = event.header.time;
                push(&gesture(CLAP_EVENT_PARAM_GESTURE_BEGIN, id, t).header);
                push(&event.header);
                push(&gesture(CLAP_EVENT_PARAM_GESTURE_END, id, t).header);
            }
        }
    }
    let frames = i64::from(process.frames_count);
    let last = process.frames_count.saturating_sub(1);
    let mut g = 0;
    while g < shim.open {
        shim.gestures[g].1 -= frames;
        if shim.gestures[g].1 <= 0 {
            push(&gesture(CLAP_EVENT_PARAM_GESTURE_END, shim.gestures[g].0, last).header);
            shim.open -= 1;
            shim.gestures[g] = shim.gestures[shim.open];
        } else {
            g += 1;
        }
    }
}

unsafe extern "C" fn shim_destroy(plugin: *const clap_plugin) {
    if plugin.is_null() {
        return;
    }
    // SAFETY: the Box we leaked in `create_plugin`; the host calls destroy once.
    let shim = unsafe { Box::from_raw(plugin as *mut Shim) };
    // SAFETY: nice-plug's own destroy with its own pointer frees the wrapper.
    unsafe {
        if let Some(destroy) = (*shim.inner).destroy {
            destroy(shim.inner);
        }
    }
    drop(shim);
}

fn descriptor() -> &'static PluginDescriptor {
    static DESCRIPTOR: OnceLock<PluginDescriptor> = OnceLock::new();
    DESCRIPTOR.get_or_init(PluginDescriptor::for_plugin::<Lockstep>)
}

unsafe extern "C" fn get_plugin_count(_factory: *const clap_plugin_factory) -> u32 {
    1
}

unsafe extern "C" fn get_plugin_descriptor(
    _factory: *const clap_plugin_factory,
    index: u32,
) -> *const clap_plugin_descriptor {
    if index == 0 {
        descriptor().clap_plugin_descriptor()
    } else {
        ptr::null()
    }
}

unsafe extern "C" fn create_plugin(
    _factory: *const clap_plugin_factory,
    host: *const clap_host,
    plugin_id: *const c_char,
) -> *const clap_plugin {
    if plugin_id.is_null() || host.is_null() {
        return ptr::null();
    }
    // SAFETY: a NUL-terminated string from the host.
    if unsafe { CStr::from_ptr(plugin_id) } != descriptor().clap_id() {
        return ptr::null();
    }
    // SAFETY: nice-plug's constructor; the Arc is released by its `destroy`.
    let wrapper: Arc<Wrapper<Lockstep>> = unsafe { Wrapper::<Lockstep>::new(host) };
    // `Lockstep::default()` just ran on this thread inside `Wrapper::new`.
    let inbox = take_inbox();
    let inner = wrapper.clap_plugin.as_ptr() as *const clap_plugin;
    let _ = Arc::into_raw(wrapper);
    // SAFETY: `inner` points into the wrapper, alive until its destroy.
    let mut clap = unsafe { *inner };
    clap.activate = Some(shim_activate);
    clap.process = Some(shim_process);
    clap.reset = Some(shim_reset);
    clap.start_processing = Some(shim_start_processing);
    clap.destroy = Some(shim_destroy);
    let shim = Box::new(Shim {
        clap,
        inner,
        inbox,
        sample_rate: 48_000.0,
        gestures: [(0, 0); MAX_GESTURES],
        open: 0,
        injected: [param_value(0, 0.0); MAX_PER_BLOCK],
        injected_len: 0,
        pending: [(
            0,
            HostParamChange {
                clap_id: 0,
                value: 0.0,
                at_sample: None,
            },
        ); MAX_PENDING],
        pending_len: 0,
        clock: 0,
        host_in: ptr::null(),
        order: [0; MAX_MERGED],
        order_len: 0,
    });
    Box::into_raw(shim) as *const clap_plugin
}

static FACTORY: clap_plugin_factory = clap_plugin_factory {
    get_plugin_count: Some(get_plugin_count),
    get_plugin_descriptor: Some(get_plugin_descriptor),
    create_plugin: Some(create_plugin),
};

extern "C" fn entry_init(_path: *const c_char) -> bool {
    setup_logger::<Lockstep>();
    true
}

extern "C" fn entry_deinit() {}

extern "C" fn entry_get_factory(factory_id: *const c_char) -> *const c_void {
    // SAFETY: a NUL-terminated string from the host, checked for null first.
    if !factory_id.is_null() && unsafe { CStr::from_ptr(factory_id) } == CLAP_PLUGIN_FACTORY_ID {
        &FACTORY as *const clap_plugin_factory as *const c_void
    } else {
        ptr::null()
    }
}

/// The CLAP entry point.
#[unsafe(no_mangle)]
#[used]
pub static clap_entry: clap_plugin_entry = clap_plugin_entry {
    clap_version: CLAP_VERSION,
    init: Some(entry_init),
    deinit: Some(entry_deinit),
    get_factory: Some(entry_get_factory),
};
