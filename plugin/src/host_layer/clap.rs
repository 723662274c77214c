//! Lockstep's CLAP entry point: nice-plug's CLAP wrapper inside our host-facing layer.
//!
//! Our outer `clap_plugin` is a copy of nice-plug's own (its `plugin_data` is the wrapper, so
//! every extension nice-plug exposes works unchanged) with `activate`, `process` and `destroy`
//! replaced. The copy is written once, before the host sees it; everything the layer changes
//! later lives in an [`AudioCell`].

use std::ffi::{CStr, c_char, c_void};
use std::ptr;
use std::sync::{Arc, OnceLock};

use clap_sys::events::{
    CLAP_CORE_EVENT_SPACE_ID, CLAP_EVENT_PARAM_GESTURE_BEGIN, CLAP_EVENT_PARAM_GESTURE_END,
    CLAP_EVENT_PARAM_VALUE, clap_event_header, clap_event_param_gesture, clap_event_param_value,
    clap_input_events, clap_output_events,
};
use clap_sys::plugin::clap_plugin;
use clap_sys::process::{CLAP_PROCESS_ERROR, clap_process, clap_process_status};
use nice_plug::wrapper::clap::{
    CLAP_PLUGIN_FACTORY_ID, CLAP_VERSION, PluginDescriptor, Wrapper, clap_host,
    clap_plugin_descriptor, clap_plugin_entry, clap_plugin_factory,
};
use nice_plug::wrapper::setup_logger;

use super::{AudioCell, Injected, MAX_PER_BLOCK, Planner, Report, claim};
use crate::Lockstep;
use lockstep_net::params::LayerStats;

/// Host input events we can interleave our timed ones with. Beyond this, ours go first at
/// time 0 and every host event follows (none is ever dropped).
pub const MAX_MERGED: usize = 2048;
/// Marks an index into our own events in the merged order.
const OURS: u32 = 1 << 31;

/// One instance: our `clap_plugin` first (the host's pointer is a pointer to this struct).
#[repr(C)]
struct Shim {
    /// Read by the host at any time; never written after creation.
    clap: clap_plugin,
    /// nice-plug's own `clap_plugin` (inside its wrapper, which lives as long as we do).
    inner: *const clap_plugin,
    state: AudioCell<State>,
    /// The planner's counters, reachable when the state is busy.
    stats: Arc<LayerStats>,
}

/// What the layer changes per block (audio thread; `activate` on the main thread while not
/// processing, as CLAP requires).
struct State {
    planner: Planner,
    /// This block's changes as CLAP events.
    events: [clap_event_param_value; MAX_PER_BLOCK],
    /// The time-sorted order of the merged list (host indices, or ours with [`OURS`] set).
    order: [u32; MAX_MERGED],
}

/// The merged input list the wrapper reads during one process call (read-only).
struct Merged<'a> {
    host: *const clap_input_events,
    host_len: usize,
    ours: &'a [clap_event_param_value],
    /// Interleaved order, or `None`: ours first, then every host event.
    order: Option<&'a [u32]>,
}

fn param_value(event: Injected) -> clap_event_param_value {
    clap_event_param_value {
        header: clap_event_header {
            size: std::mem::size_of::<clap_event_param_value>() as u32,
            time: event.time,
            space_id: CLAP_CORE_EVENT_SPACE_ID,
            type_: CLAP_EVENT_PARAM_VALUE,
            flags: 0,
        },
        param_id: event.id,
        cookie: ptr::null_mut(),
        note_id: -1,
        port_index: -1,
        channel: -1,
        key: -1,
        value: event.value,
    }
}

fn gesture(kind: u16, id: u32, time: u32) -> clap_event_param_gesture {
    clap_event_param_gesture {
        header: clap_event_header {
            size: std::mem::size_of::<clap_event_param_gesture>() as u32,
            time,
            space_id: CLAP_CORE_EVENT_SPACE_ID,
            type_: kind,
            flags: 0,
        },
        param_id: id,
    }
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
    if host.is_null() {
        return ptr::null();
    }
    // SAFETY: the host's list is valid for the process call.
    unsafe { (*host).get.map_or(ptr::null(), |f| f(host, i as u32)) }
}

unsafe extern "C" fn merged_size(list: *const clap_input_events) -> u32 {
    // SAFETY: `ctx` is the `Merged` that lives on `shim_process`'s stack for this call.
    let merged = unsafe { &*((*list).ctx as *const Merged) };
    (merged.ours.len() + merged.host_len) as u32
}

unsafe extern "C" fn merged_get(
    list: *const clap_input_events,
    index: u32,
) -> *const clap_event_header {
    // SAFETY: as in `merged_size`.
    let merged = unsafe { &*((*list).ctx as *const Merged) };
    let index = index as usize;
    match merged.order {
        Some(order) => match order.get(index) {
            Some(&o) if o & OURS != 0 => &merged.ours[(o & !OURS) as usize].header,
            Some(&o) => host_event(merged.host, o as usize),
            None => ptr::null(),
        },
        None if index < merged.ours.len() => &merged.ours[index].header,
        None if index < merged.ours.len() + merged.host_len => {
            host_event(merged.host, index - merged.ours.len())
        }
        None => ptr::null(),
    }
}

/// Interleave our (time-sorted) events with the host's (time-sorted) ones into `order`, or
/// return `None` when they do not fit: then ours move to time 0 and go first.
fn merge_order<'a>(
    ours: &mut [clap_event_param_value],
    host: *const clap_input_events,
    host_len: usize,
    order: &'a mut [u32; MAX_MERGED],
) -> Option<&'a [u32]> {
    if host_len + ours.len() > MAX_MERGED {
        for event in ours.iter_mut() {
            event.header.time = 0;
        }
        return None;
    }
    let (mut h, mut k, mut n) = (0, 0, 0);
    while h < host_len || k < ours.len() {
        let ours_first = k < ours.len()
            && (h == host_len || {
                let e = host_event(host, h);
                // SAFETY: a valid event header from the host's list (null checked).
                let t = if e.is_null() { 0 } else { unsafe { (*e).time } };
                ours[k].header.time < t
            });
        if ours_first {
            order[n] = OURS | k as u32;
            k += 1;
        } else {
            order[n] = h as u32;
            h += 1;
        }
        n += 1;
    }
    Some(&order[..n])
}

unsafe extern "C" fn shim_activate(
    plugin: *const clap_plugin,
    sample_rate: f64,
    min_frames: u32,
    max_frames: u32,
) -> bool {
    // SAFETY: the host passes back the pointer we gave it: a `Shim`, alive until destroy.
    let shim = unsafe { &*(plugin as *const Shim) };
    shim.state
        .try_with(|state| state.planner.activate(sample_rate));
    // SAFETY: nice-plug's own function with its own plugin pointer.
    unsafe {
        (*shim.inner)
            .activate
            .is_some_and(|f| f(shim.inner, sample_rate, min_frames, max_frames))
    }
}

unsafe extern "C" fn shim_process(
    plugin: *const clap_plugin,
    process: *const clap_process,
) -> clap_process_status {
    if plugin.is_null() || process.is_null() {
        return CLAP_PROCESS_ERROR;
    }
    // SAFETY: our pointer, alive until destroy; only shared references are formed.
    let shim = unsafe { &*(plugin as *const Shim) };
    // SAFETY: valid for this call (CLAP).
    let host_process = unsafe { &*process };
    // SAFETY: nice-plug's own plugin struct.
    let Some(inner_process) = (unsafe { (*shim.inner).process }) else {
        return CLAP_PROCESS_ERROR;
    };
    let run = |state: &mut State| {
        let frames = host_process.frames_count;
        let n = state.planner.plan(frames).len();
        if n == 0 {
            // SAFETY: nice-plug's own function and pointer, the host's process data.
            let status = unsafe { inner_process(shim.inner, process) };
            report_to_host(&mut state.planner, host_process);
            return status;
        }
        for (slot, event) in state.events.iter_mut().zip(state.planner.block()) {
            *slot = param_value(*event);
        }
        let host = host_process.in_events;
        let host_len = host_len(host);
        let ours = &mut state.events[..n];
        let order = merge_order(ours, host, host_len, &mut state.order);
        if order.is_none() {
            state
                .planner
                .stats()
                .unmerged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for event in state.planner.block_mut() {
                event.time = 0;
            }
        }
        let merged = Merged {
            host,
            host_len,
            ours: &state.events[..n],
            order,
        };
        let list = clap_input_events {
            ctx: &merged as *const Merged as *mut c_void,
            size: Some(merged_size),
            get: Some(merged_get),
        };
        let mut ours_process = *host_process;
        ours_process.in_events = &list;
        // SAFETY: as above; `list` and `merged` outlive the call.
        let status = unsafe { inner_process(shim.inner, &ours_process) };
        report_to_host(&mut state.planner, host_process);
        status
    };
    match super::checked(|| shim.state.try_with(run)) {
        Some(status) => status,
        None => {
            // Entered concurrently (the host broke CLAP's rules): pass the host's events
            // through; our changes stay queued.
            shim.stats
                .contended
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: nice-plug's own function and pointer, the host's process data.
            unsafe { inner_process(shim.inner, process) }
        }
    }
}

/// Gesture begin / value / gesture end for this block's remote changes, and the ends of
/// gestures that went quiet.
fn report_to_host(planner: &mut Planner, process: &clap_process) {
    let out: *const clap_output_events = process.out_events;
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
    planner.report(process.frames_count, &mut |report| match report {
        Report::Begin(id, t) => push(&gesture(CLAP_EVENT_PARAM_GESTURE_BEGIN, id, t).header),
        Report::Value(event) => push(&param_value(event).header),
        Report::End(id, t) => push(&gesture(CLAP_EVENT_PARAM_GESTURE_END, id, t).header),
    });
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
    // `Lockstep::default()` ran on this thread inside `Wrapper::new`.
    let planner = claim().map_or_else(Planner::detached, Planner::new);
    let inner = wrapper.clap_plugin.as_ptr() as *const clap_plugin;
    let _ = Arc::into_raw(wrapper);
    // SAFETY: `inner` points into the wrapper, alive until its destroy.
    let mut clap = unsafe { *inner };
    clap.activate = Some(shim_activate);
    clap.process = Some(shim_process);
    clap.destroy = Some(shim_destroy);
    let stats = Arc::clone(planner.stats());
    let shim = Box::new(Shim {
        clap,
        inner,
        stats,
        state: AudioCell::new(State {
            planner,
            events: [param_value(Injected {
                time: 0,
                id: 0,
                value: 0.0,
            }); MAX_PER_BLOCK],
            order: [0; MAX_MERGED],
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host event list over a slice of param-value events.
    struct HostList(Vec<clap_event_param_value>);

    unsafe extern "C" fn list_size(list: *const clap_input_events) -> u32 {
        // SAFETY: test-owned context.
        unsafe { (*((*list).ctx as *const HostList)).0.len() as u32 }
    }

    unsafe extern "C" fn list_get(
        list: *const clap_input_events,
        i: u32,
    ) -> *const clap_event_header {
        // SAFETY: test-owned context.
        let l = unsafe { &*((*list).ctx as *const HostList) };
        l.0.get(i as usize).map_or(ptr::null(), |e| &e.header)
    }

    fn event(time: u32, id: u32) -> clap_event_param_value {
        param_value(Injected {
            time,
            id,
            value: 0.0,
        })
    }

    fn read(merged: &Merged) -> Vec<(u32, u32)> {
        let list = clap_input_events {
            ctx: merged as *const Merged as *mut c_void,
            size: Some(merged_size),
            get: Some(merged_get),
        };
        // SAFETY: the list and its context are alive.
        let n = unsafe { merged_size(&list) };
        (0..n)
            .map(|i| {
                // SAFETY: as above; index in range.
                let e = unsafe { &*(merged_get(&list, i) as *const clap_event_param_value) };
                (e.header.time, e.param_id)
            })
            .collect()
    }

    #[test]
    fn ours_interleave_with_the_hosts_in_time_order() {
        let host = HostList(vec![event(0, 100), event(10, 101), event(20, 102)]);
        let host_list = clap_input_events {
            ctx: &host as *const HostList as *mut c_void,
            size: Some(list_size),
            get: Some(list_get),
        };
        let mut ours = [event(5, 1), event(20, 2), event(30, 3)];
        let mut order = [0u32; MAX_MERGED];
        let order = merge_order(&mut ours, &host_list, 3, &mut order);
        let merged = Merged {
            host: &host_list,
            host_len: 3,
            ours: &ours,
            order,
        };
        // Equal times: the host's first (its event was there before ours).
        assert_eq!(
            read(&merged),
            vec![(0, 100), (5, 1), (10, 101), (20, 102), (20, 2), (30, 3)]
        );
    }

    #[test]
    fn too_many_host_events_keep_every_one_and_put_ours_first() {
        let host = HostList(
            (0..MAX_MERGED as u32)
                .map(|i| event(i / 8, 1000 + i))
                .collect(),
        );
        let host_list = clap_input_events {
            ctx: &host as *const HostList as *mut c_void,
            size: Some(list_size),
            get: Some(list_get),
        };
        let mut ours = [event(7, 1), event(9, 2)];
        let mut order = [0u32; MAX_MERGED];
        let order = merge_order(&mut ours, &host_list, MAX_MERGED, &mut order);
        assert!(order.is_none());
        let merged = Merged {
            host: &host_list,
            host_len: MAX_MERGED,
            ours: &ours,
            order,
        };
        let seen = read(&merged);
        assert_eq!(seen.len(), MAX_MERGED + 2, "no host event may be lost");
        assert_eq!(&seen[..2], &[(0, 1), (0, 2)]);
        assert_eq!(seen[2], (0, 1000));
        assert_eq!(
            seen[MAX_MERGED + 1],
            ((MAX_MERGED as u32 - 1) / 8, 1000 + MAX_MERGED as u32 - 1)
        );
        // Still sorted by time, as CLAP requires.
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    unsafe extern "C" fn no_extension(_: *const clap_host, _: *const c_char) -> *const c_void {
        ptr::null()
    }

    unsafe extern "C" fn no_request(_: *const clap_host) {}

    #[test]
    fn layer_attaches_to_the_instance_nice_plug_constructs() {
        // Fails loudly if nice-plug stops constructing the plugin synchronously inside its
        // wrapper's constructor (the handoff the layer relies on), or stops exposing its own
        // `clap_plugin` for us to copy.
        let host = clap_host {
            clap_version: CLAP_VERSION,
            host_data: ptr::null_mut(),
            name: c"layer test".as_ptr(),
            vendor: c"lockstep".as_ptr(),
            url: c"".as_ptr(),
            version: c"0".as_ptr(),
            get_extension: Some(no_extension),
            request_restart: Some(no_request),
            request_process: Some(no_request),
            request_callback: Some(no_request),
        };
        // SAFETY: our own factory with a valid host and id.
        let plugin = unsafe { create_plugin(&FACTORY, &host, descriptor().clap_id().as_ptr()) };
        assert!(!plugin.is_null());
        // SAFETY: the pointer we just made; destroyed below.
        let shim = unsafe { &*(plugin as *const Shim) };
        let attached = shim.state.try_with(|s| s.planner.is_attached());
        assert_eq!(
            attached,
            Some(true),
            "the CLAP layer did not get this instance's queue"
        );
        // Our copy keeps nice-plug's own callbacks for everything we do not replace.
        // SAFETY: both structs are alive.
        unsafe {
            assert_eq!(shim.clap.plugin_data, (*shim.inner).plugin_data);
            assert_eq!(
                shim.clap.get_extension.map(|f| f as usize),
                (*shim.inner).get_extension.map(|f| f as usize)
            );
            shim_destroy(plugin);
        }
    }
}
