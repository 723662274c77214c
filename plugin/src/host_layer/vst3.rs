//! Lockstep's VST3 entry point: nice-plug's VST3 wrapper inside our host-facing layer.
//!
//! Our factory creates nice-plug's `Wrapper` (public API) and hands the host a COM object of
//! ours that implements the same interfaces. Every call is forwarded to nice-plug's object
//! unchanged except two:
//! - `IAudioProcessor::setupProcessing` also tells the planner the sample rate;
//! - `IAudioProcessor::process` adds this block's remote changes to the host's input
//!   parameter changes (one extra queue per change, at its sample offset), so nice-plug applies
//!   them as it applies automation, and reports them back in the host's *output* parameter
//!   changes with the same offsets: the VST3 way for a processor to tell the host that a
//!   parameter moved (the host updates its controls and, where it records processor output,
//!   its automation).
//!
//! VST3 values are normalised (0..1); the worker queues CLAP values (steps for discrete
//! parameters), converted here with each parameter's step count read from nice-plug's own
//! `getParameterInfo` when the instance is created.

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use nice_plug::wrapper::setup_logger;
use nice_plug::wrapper::vst3::vst3::Steinberg::Vst::ChannelContext::{
    IInfoListener, IInfoListenerTrait,
};
use nice_plug::wrapper::vst3::vst3::Steinberg::Vst::IAttributeList;
use nice_plug::wrapper::vst3::vst3::Steinberg::Vst::{
    BusDirection, BusInfo, CtrlNumber, IAudioProcessor, IAudioProcessorTrait, IComponent,
    IComponentHandler, IComponentTrait, IEditController, IEditControllerTrait, IMidiMapping,
    IMidiMappingTrait, INoteExpressionController, INoteExpressionControllerTrait, IParamValueQueue,
    IParamValueQueueTrait, IParameterChanges, IParameterChangesTrait, IProcessContextRequirements,
    IProcessContextRequirementsTrait, IUnitInfo, IUnitInfoTrait, IoMode, MediaType,
    NoteExpressionTypeID, NoteExpressionTypeInfo, NoteExpressionValue, ParamID, ParamValue,
    ParameterInfo, ProcessData, ProcessSetup, ProgramListID, ProgramListInfo, RoutingInfo,
    SpeakerArrangement, String128, TChar, UnitID, UnitInfo,
};
use nice_plug::wrapper::vst3::vst3::Steinberg::{
    FIDString, FUnknown, IBStream, IPlugView, IPluginBaseTrait, IPluginFactory, IPluginFactory2,
    IPluginFactory2Trait, IPluginFactory3, IPluginFactory3Trait, IPluginFactoryTrait, PClassInfo,
    PClassInfo2, PClassInfoW, PFactoryInfo, TBool, TUID, int16, int32, kInvalidArgument,
    kResultFalse, kResultOk, tresult, uint32,
};
use nice_plug::wrapper::vst3::vst3::{Class, ComPtr, ComRef, ComWrapper};
use nice_plug::wrapper::vst3::{PluginInfo, Wrapper};

use super::{AudioCell, Injected, MAX_PER_BLOCK, Planner, Report, claim};
use crate::Lockstep;
use lockstep_net::params::LayerStats;
use std::sync::Arc;

/// One injected change as a VST3 parameter queue with one point. Written by the audio thread
/// before the wrapper reads it during the same process call.
#[derive(Default)]
struct OnePoint {
    id: AtomicU32,
    offset: AtomicI32,
    value: AtomicU64,
}

impl Class for OnePoint {
    type Interfaces = (IParamValueQueue,);
}

impl IParamValueQueueTrait for OnePoint {
    unsafe fn getParameterId(&self) -> ParamID {
        self.id.load(Ordering::Relaxed)
    }

    unsafe fn getPointCount(&self) -> int32 {
        1
    }

    unsafe fn getPoint(&self, index: int32, offset: *mut int32, value: *mut ParamValue) -> tresult {
        if index != 0 || offset.is_null() || value.is_null() {
            return kInvalidArgument;
        }
        // SAFETY: checked for null; the caller's out-parameters.
        unsafe {
            *offset = self.offset.load(Ordering::Relaxed);
            *value = f64::from_bits(self.value.load(Ordering::Relaxed));
        }
        kResultOk
    }

    unsafe fn addPoint(&self, _offset: int32, _value: ParamValue, _index: *mut int32) -> tresult {
        // Input queues are read-only.
        kResultFalse
    }
}

/// The host's input parameter changes followed by ours, as one list.
struct MergedChanges {
    host: AtomicPtr<IParameterChanges>,
    ours: AtomicUsize,
    points: Vec<ComWrapper<OnePoint>>,
}

impl Class for MergedChanges {
    type Interfaces = (IParameterChanges,);
}

impl MergedChanges {
    fn host_count(&self) -> int32 {
        let host = self.host.load(Ordering::Relaxed);
        // SAFETY: the host's list, valid for the process call in which it was stored.
        match unsafe { ComRef::from_raw(host) } {
            Some(list) => unsafe { list.getParameterCount() }.max(0),
            None => 0,
        }
    }
}

impl IParameterChangesTrait for MergedChanges {
    unsafe fn getParameterCount(&self) -> int32 {
        self.host_count() + self.ours.load(Ordering::Relaxed) as int32
    }

    unsafe fn getParameterData(&self, index: int32) -> *mut IParamValueQueue {
        let host_count = self.host_count();
        if index < 0 {
            return std::ptr::null_mut();
        }
        if index < host_count {
            let host = self.host.load(Ordering::Relaxed);
            // SAFETY: as in `host_count`; index in range.
            return match unsafe { ComRef::from_raw(host) } {
                Some(list) => unsafe { list.getParameterData(index) },
                None => std::ptr::null_mut(),
            };
        }
        let ours = (index - host_count) as usize;
        if ours >= self.ours.load(Ordering::Relaxed) {
            return std::ptr::null_mut();
        }
        self.points[ours]
            .as_com_ref::<IParamValueQueue>()
            .map_or(std::ptr::null_mut(), |q| q.as_ptr())
    }

    unsafe fn addParameterData(
        &self,
        _id: *const ParamID,
        _index: *mut int32,
    ) -> *mut IParamValueQueue {
        std::ptr::null_mut()
    }
}

/// Our component: nice-plug's interfaces, forwarded.
struct Component {
    component: ComPtr<IComponent>,
    controller: ComPtr<IEditController>,
    processor: ComPtr<IAudioProcessor>,
    midi_mapping: ComPtr<IMidiMapping>,
    note_expression: ComPtr<INoteExpressionController>,
    context_requirements: ComPtr<IProcessContextRequirements>,
    unit_info: ComPtr<IUnitInfo>,
    info_listener: ComPtr<IInfoListener>,
    changes: ComWrapper<MergedChanges>,
    /// (parameter id, VST3 step count) for every parameter, read once at creation.
    steps: Vec<(u32, i32)>,
    planner: AudioCell<Planner>,
    /// The planner's counters, reachable when the planner is busy.
    stats: Arc<LayerStats>,
}

impl Class for Component {
    type Interfaces = (
        IComponent,
        IEditController,
        IAudioProcessor,
        IMidiMapping,
        INoteExpressionController,
        IProcessContextRequirements,
        IUnitInfo,
        IInfoListener,
    );
}

impl Component {
    /// Wrap nice-plug's object; `None` if it lacks one of the interfaces we forward.
    fn new(inner: ComPtr<FUnknown>, planner: Planner) -> Option<Self> {
        let controller: ComPtr<IEditController> = inner.cast()?;
        // SAFETY: nice-plug's controller, on the thread creating the instance.
        let count = unsafe { controller.getParameterCount() }.max(0);
        let steps = (0..count)
            .filter_map(|i| {
                // SAFETY: a zeroed plain-data struct filled by the callee.
                let mut info: ParameterInfo = unsafe { std::mem::zeroed() };
                // SAFETY: index in range, valid out-pointer.
                (unsafe { controller.getParameterInfo(i, &mut info) } == kResultOk)
                    .then_some((info.id, info.stepCount))
            })
            .collect();
        Some(Self {
            component: inner.cast()?,
            processor: inner.cast()?,
            midi_mapping: inner.cast()?,
            note_expression: inner.cast()?,
            context_requirements: inner.cast()?,
            unit_info: inner.cast()?,
            info_listener: inner.cast()?,
            controller,
            changes: ComWrapper::new(MergedChanges {
                host: AtomicPtr::new(std::ptr::null_mut()),
                ours: AtomicUsize::new(0),
                points: (0..MAX_PER_BLOCK)
                    .map(|_| ComWrapper::new(OnePoint::default()))
                    .collect(),
            }),
            steps,
            stats: Arc::clone(planner.stats()),
            planner: AudioCell::new(planner),
        })
    }

    /// The VST3 (normalised) value of a CLAP value.
    fn normalized(&self, event: Injected) -> f64 {
        match self.steps.iter().find(|(id, _)| *id == event.id) {
            Some(&(_, steps)) if steps > 0 => (event.value / f64::from(steps)).clamp(0.0, 1.0),
            _ => event.value.clamp(0.0, 1.0),
        }
    }

    /// One process call with this block's remote changes merged in.
    fn process_with(&self, planner: &mut Planner, data: *mut ProcessData) -> tresult {
        // SAFETY: the host's process data, valid for this call (null checked by the caller).
        let host_data = unsafe { *data };
        let frames = host_data.numSamples.max(0) as u32;
        let n = planner.plan(frames).len();
        let status = if n == 0 {
            // SAFETY: nice-plug's processor with the host's own data.
            unsafe { self.processor.process(data) }
        } else {
            for (point, event) in self.changes.points.iter().zip(planner.block()) {
                point.id.store(event.id, Ordering::Relaxed);
                point.offset.store(event.time as i32, Ordering::Relaxed);
                point
                    .value
                    .store(self.normalized(*event).to_bits(), Ordering::Relaxed);
            }
            self.changes
                .host
                .store(host_data.inputParameterChanges, Ordering::Relaxed);
            self.changes.ours.store(n, Ordering::Relaxed);
            let mut ours = host_data;
            ours.inputParameterChanges = self
                .changes
                .as_com_ref::<IParameterChanges>()
                .map_or(std::ptr::null_mut(), |c| c.as_ptr());
            // SAFETY: nice-plug's processor; `ours` and the merged list outlive the call.
            let status = unsafe { self.processor.process(&mut ours) };
            self.changes.ours.store(0, Ordering::Relaxed);
            self.changes
                .host
                .store(std::ptr::null_mut(), Ordering::Relaxed);
            status
        };
        // SAFETY: the host's output list (may be null), valid for this call.
        let out = unsafe { ComRef::from_raw(host_data.outputParameterChanges) };
        planner.report(frames, &mut |report| {
            let (Report::Value(event), Some(out)) = (report, out.as_ref()) else {
                // VST3 has no gestures in process(): the values carry the change.
                return;
            };
            let mut index = 0;
            // SAFETY: the host's list; valid pointers to locals.
            let queue = unsafe { out.addParameterData(&event.id, &mut index) };
            // SAFETY: the host's queue for this call, if it gave one.
            if let Some(queue) = unsafe { ComRef::from_raw(queue) } {
                let mut point = 0;
                // SAFETY: as above.
                unsafe { queue.addPoint(event.time as i32, self.normalized(event), &mut point) };
            }
        });
        status
    }
}

// Everything below forwards to nice-plug's object, except `setupProcessing` and `process`.

impl IPluginBaseTrait for Component {
    unsafe fn initialize(&self, context: *mut FUnknown) -> tresult {
        unsafe { self.component.initialize(context) }
    }
    unsafe fn terminate(&self) -> tresult {
        unsafe { self.component.terminate() }
    }
}

impl IComponentTrait for Component {
    unsafe fn getControllerClassId(&self, class_id: *mut TUID) -> tresult {
        unsafe { self.component.getControllerClassId(class_id) }
    }
    unsafe fn setIoMode(&self, mode: IoMode) -> tresult {
        unsafe { self.component.setIoMode(mode) }
    }
    unsafe fn getBusCount(&self, kind: MediaType, dir: BusDirection) -> int32 {
        unsafe { self.component.getBusCount(kind, dir) }
    }
    unsafe fn getBusInfo(
        &self,
        kind: MediaType,
        dir: BusDirection,
        index: int32,
        bus: *mut BusInfo,
    ) -> tresult {
        unsafe { self.component.getBusInfo(kind, dir, index, bus) }
    }
    unsafe fn getRoutingInfo(&self, in_info: *mut RoutingInfo, out: *mut RoutingInfo) -> tresult {
        unsafe { self.component.getRoutingInfo(in_info, out) }
    }
    unsafe fn activateBus(
        &self,
        kind: MediaType,
        dir: BusDirection,
        index: int32,
        state: TBool,
    ) -> tresult {
        unsafe { self.component.activateBus(kind, dir, index, state) }
    }
    unsafe fn setActive(&self, state: TBool) -> tresult {
        unsafe { self.component.setActive(state) }
    }
    unsafe fn setState(&self, state: *mut IBStream) -> tresult {
        unsafe { self.component.setState(state) }
    }
    unsafe fn getState(&self, state: *mut IBStream) -> tresult {
        unsafe { self.component.getState(state) }
    }
}

impl IEditControllerTrait for Component {
    unsafe fn setComponentState(&self, state: *mut IBStream) -> tresult {
        unsafe { self.controller.setComponentState(state) }
    }
    unsafe fn setState(&self, state: *mut IBStream) -> tresult {
        unsafe { IEditControllerTrait::setState(&self.controller, state) }
    }
    unsafe fn getState(&self, state: *mut IBStream) -> tresult {
        unsafe { IEditControllerTrait::getState(&self.controller, state) }
    }
    unsafe fn getParameterCount(&self) -> int32 {
        unsafe { self.controller.getParameterCount() }
    }
    unsafe fn getParameterInfo(&self, index: int32, info: *mut ParameterInfo) -> tresult {
        unsafe { self.controller.getParameterInfo(index, info) }
    }
    unsafe fn getParamStringByValue(
        &self,
        id: ParamID,
        value: ParamValue,
        string: *mut String128,
    ) -> tresult {
        unsafe { self.controller.getParamStringByValue(id, value, string) }
    }
    unsafe fn getParamValueByString(
        &self,
        id: ParamID,
        string: *mut TChar,
        value: *mut ParamValue,
    ) -> tresult {
        unsafe { self.controller.getParamValueByString(id, string, value) }
    }
    unsafe fn normalizedParamToPlain(&self, id: ParamID, value: ParamValue) -> ParamValue {
        unsafe { self.controller.normalizedParamToPlain(id, value) }
    }
    unsafe fn plainParamToNormalized(&self, id: ParamID, plain: ParamValue) -> ParamValue {
        unsafe { self.controller.plainParamToNormalized(id, plain) }
    }
    unsafe fn getParamNormalized(&self, id: ParamID) -> ParamValue {
        unsafe { self.controller.getParamNormalized(id) }
    }
    unsafe fn setParamNormalized(&self, id: ParamID, value: ParamValue) -> tresult {
        unsafe { self.controller.setParamNormalized(id, value) }
    }
    unsafe fn setComponentHandler(&self, handler: *mut IComponentHandler) -> tresult {
        unsafe { self.controller.setComponentHandler(handler) }
    }
    unsafe fn createView(&self, name: FIDString) -> *mut IPlugView {
        unsafe { self.controller.createView(name) }
    }
}

impl IAudioProcessorTrait for Component {
    unsafe fn setBusArrangements(
        &self,
        inputs: *mut SpeakerArrangement,
        num_ins: int32,
        outputs: *mut SpeakerArrangement,
        num_outs: int32,
    ) -> tresult {
        unsafe {
            self.processor
                .setBusArrangements(inputs, num_ins, outputs, num_outs)
        }
    }
    unsafe fn getBusArrangement(
        &self,
        dir: BusDirection,
        index: int32,
        arr: *mut SpeakerArrangement,
    ) -> tresult {
        unsafe { self.processor.getBusArrangement(dir, index, arr) }
    }
    unsafe fn canProcessSampleSize(&self, size: int32) -> tresult {
        unsafe { self.processor.canProcessSampleSize(size) }
    }
    unsafe fn getLatencySamples(&self) -> uint32 {
        unsafe { self.processor.getLatencySamples() }
    }
    unsafe fn setupProcessing(&self, setup: *mut ProcessSetup) -> tresult {
        if !setup.is_null() {
            // SAFETY: the host's setup, valid for this call (not processing, per VST3).
            let rate = unsafe { (*setup).sampleRate };
            self.planner.try_with(|planner| planner.activate(rate));
        }
        unsafe { self.processor.setupProcessing(setup) }
    }
    unsafe fn setProcessing(&self, state: TBool) -> tresult {
        unsafe { self.processor.setProcessing(state) }
    }
    unsafe fn process(&self, data: *mut ProcessData) -> tresult {
        if data.is_null() {
            return unsafe { self.processor.process(data) };
        }
        match super::checked(|| {
            self.planner
                .try_with(|planner| self.process_with(planner, data))
        }) {
            Some(status) => status,
            None => {
                // Entered concurrently (a host breaking VST3's rules): pass the host's data
                // through; our changes stay queued.
                self.stats.contended.fetch_add(1, Ordering::Relaxed);
                unsafe { self.processor.process(data) }
            }
        }
    }
    unsafe fn getTailSamples(&self) -> uint32 {
        unsafe { self.processor.getTailSamples() }
    }
}

impl IMidiMappingTrait for Component {
    unsafe fn getMidiControllerAssignment(
        &self,
        bus: int32,
        channel: int16,
        number: CtrlNumber,
        id: *mut ParamID,
    ) -> tresult {
        unsafe {
            self.midi_mapping
                .getMidiControllerAssignment(bus, channel, number, id)
        }
    }
}

impl INoteExpressionControllerTrait for Component {
    unsafe fn getNoteExpressionCount(&self, bus: int32, channel: int16) -> int32 {
        unsafe { self.note_expression.getNoteExpressionCount(bus, channel) }
    }
    unsafe fn getNoteExpressionInfo(
        &self,
        bus: int32,
        channel: int16,
        index: int32,
        info: *mut NoteExpressionTypeInfo,
    ) -> tresult {
        unsafe {
            self.note_expression
                .getNoteExpressionInfo(bus, channel, index, info)
        }
    }
    unsafe fn getNoteExpressionStringByValue(
        &self,
        bus: int32,
        channel: int16,
        id: NoteExpressionTypeID,
        value: NoteExpressionValue,
        string: *mut String128,
    ) -> tresult {
        unsafe {
            self.note_expression
                .getNoteExpressionStringByValue(bus, channel, id, value, string)
        }
    }
    unsafe fn getNoteExpressionValueByString(
        &self,
        bus: int32,
        channel: int16,
        id: NoteExpressionTypeID,
        string: *const TChar,
        value: *mut NoteExpressionValue,
    ) -> tresult {
        unsafe {
            self.note_expression
                .getNoteExpressionValueByString(bus, channel, id, string, value)
        }
    }
}

impl IProcessContextRequirementsTrait for Component {
    unsafe fn getProcessContextRequirements(&self) -> uint32 {
        unsafe { self.context_requirements.getProcessContextRequirements() }
    }
}

impl IUnitInfoTrait for Component {
    unsafe fn getUnitCount(&self) -> int32 {
        unsafe { self.unit_info.getUnitCount() }
    }
    unsafe fn getUnitInfo(&self, index: int32, info: *mut UnitInfo) -> tresult {
        unsafe { self.unit_info.getUnitInfo(index, info) }
    }
    unsafe fn getProgramListCount(&self) -> int32 {
        unsafe { self.unit_info.getProgramListCount() }
    }
    unsafe fn getProgramListInfo(&self, index: int32, info: *mut ProgramListInfo) -> tresult {
        unsafe { self.unit_info.getProgramListInfo(index, info) }
    }
    unsafe fn getProgramName(
        &self,
        list: ProgramListID,
        program: int32,
        name: *mut String128,
    ) -> tresult {
        unsafe { self.unit_info.getProgramName(list, program, name) }
    }
    unsafe fn getProgramInfo(
        &self,
        list: ProgramListID,
        program: int32,
        attribute: nice_plug::wrapper::vst3::vst3::Steinberg::Vst::CString,
        value: *mut String128,
    ) -> tresult {
        unsafe {
            self.unit_info
                .getProgramInfo(list, program, attribute, value)
        }
    }
    unsafe fn hasProgramPitchNames(&self, list: ProgramListID, program: int32) -> tresult {
        unsafe { self.unit_info.hasProgramPitchNames(list, program) }
    }
    unsafe fn getProgramPitchName(
        &self,
        list: ProgramListID,
        program: int32,
        pitch: int16,
        name: *mut String128,
    ) -> tresult {
        unsafe {
            self.unit_info
                .getProgramPitchName(list, program, pitch, name)
        }
    }
    unsafe fn getSelectedUnit(&self) -> UnitID {
        unsafe { self.unit_info.getSelectedUnit() }
    }
    unsafe fn selectUnit(&self, unit: UnitID) -> tresult {
        unsafe { self.unit_info.selectUnit(unit) }
    }
    unsafe fn getUnitByBus(
        &self,
        kind: MediaType,
        dir: BusDirection,
        bus: int32,
        channel: int32,
        unit: *mut UnitID,
    ) -> tresult {
        unsafe { self.unit_info.getUnitByBus(kind, dir, bus, channel, unit) }
    }
    unsafe fn setUnitProgramData(
        &self,
        list: int32,
        program: int32,
        data: *mut IBStream,
    ) -> tresult {
        unsafe { self.unit_info.setUnitProgramData(list, program, data) }
    }
}

impl IInfoListenerTrait for Component {
    unsafe fn setChannelContextInfos(&self, list: *mut IAttributeList) -> tresult {
        unsafe { self.info_listener.setChannelContextInfos(list) }
    }
}

/// Our factory: one class, Lockstep.
struct Factory {
    info: PluginInfo,
}

impl Class for Factory {
    type Interfaces = (IPluginFactory, IPluginFactory2, IPluginFactory3);
}

/// Create one instance: nice-plug's wrapper (which constructs the plugin on this thread),
/// then our component around it.
fn create_instance() -> Option<ComWrapper<Component>> {
    let inner = ComWrapper::new(Wrapper::<Lockstep>::new());
    let planner = claim().map_or_else(Planner::detached, Planner::new);
    let unknown = inner.to_com_ptr::<FUnknown>()?;
    Component::new(unknown, planner).map(ComWrapper::new)
}

impl IPluginFactoryTrait for Factory {
    unsafe fn getFactoryInfo(&self, info: *mut PFactoryInfo) -> tresult {
        if info.is_null() {
            return kInvalidArgument;
        }
        // SAFETY: the caller's out-parameter, checked for null.
        unsafe { *info = self.info.create_factory_info() };
        kResultOk
    }

    unsafe fn countClasses(&self) -> int32 {
        1
    }

    unsafe fn getClassInfo(&self, index: int32, info: *mut PClassInfo) -> tresult {
        if index != 0 || info.is_null() {
            return kInvalidArgument;
        }
        // SAFETY: as above.
        unsafe { *info = self.info.create_class_info() };
        kResultOk
    }

    unsafe fn createInstance(
        &self,
        cid: FIDString,
        iid: FIDString,
        obj: *mut *mut c_void,
    ) -> tresult {
        if cid.is_null() || obj.is_null() {
            return kInvalidArgument;
        }
        // SAFETY: a class id is 16 bytes.
        if unsafe { &*(cid as *const [u8; 16]) } != self.info.cid {
            return kInvalidArgument;
        }
        let Some(component) = create_instance() else {
            return kInvalidArgument;
        };
        let Some(unknown) = component.as_com_ref::<FUnknown>() else {
            return kInvalidArgument;
        };
        let ptr = unknown.as_ptr();
        // SAFETY: our object's own queryInterface; it adds the reference the caller owns.
        unsafe { ((*(*ptr).vtbl).queryInterface)(ptr, iid as *const TUID, obj) }
    }
}

impl IPluginFactory2Trait for Factory {
    unsafe fn getClassInfo2(&self, index: int32, info: *mut PClassInfo2) -> tresult {
        if index != 0 || info.is_null() {
            return kInvalidArgument;
        }
        // SAFETY: as above.
        unsafe { *info = self.info.create_class_info_2() };
        kResultOk
    }
}

impl IPluginFactory3Trait for Factory {
    unsafe fn getClassInfoUnicode(&self, index: int32, info: *mut PClassInfoW) -> tresult {
        if index != 0 || info.is_null() {
            return kInvalidArgument;
        }
        // SAFETY: as above.
        unsafe { *info = self.info.create_class_info_unicode() };
        kResultOk
    }

    unsafe fn setHostContext(&self, _context: *mut FUnknown) -> tresult {
        kResultOk
    }
}

/// The VST3 factory entry point.
#[unsafe(no_mangle)]
pub extern "system" fn GetPluginFactory() -> *mut c_void {
    ComWrapper::new(Factory {
        info: PluginInfo::for_plugin::<Lockstep>(),
    })
    .to_com_ptr::<IPluginFactory>()
    .map_or(std::ptr::null_mut(), |p| p.into_raw() as *mut c_void)
}

/// Module entry on Linux and the BSDs.
#[unsafe(no_mangle)]
#[cfg(all(target_family = "unix", not(target_os = "macos")))]
pub extern "C" fn ModuleEntry(_lib_handle: *mut c_void) -> bool {
    setup_logger::<Lockstep>();
    true
}

/// Module exit on Linux and the BSDs.
#[unsafe(no_mangle)]
#[cfg(all(target_family = "unix", not(target_os = "macos")))]
pub extern "C" fn ModuleExit() -> bool {
    true
}

/// Bundle entry on macOS.
#[unsafe(no_mangle)]
#[cfg(target_os = "macos")]
pub extern "C" fn bundleEntry(_lib_handle: *mut c_void) -> bool {
    setup_logger::<Lockstep>();
    true
}

/// Bundle exit on macOS.
#[unsafe(no_mangle)]
#[cfg(target_os = "macos")]
pub extern "C" fn bundleExit() -> bool {
    true
}

/// DLL entry on Windows.
#[unsafe(no_mangle)]
#[cfg(target_os = "windows")]
pub extern "system" fn InitDll() -> bool {
    setup_logger::<Lockstep>();
    true
}

/// DLL exit on Windows.
#[unsafe(no_mangle)]
#[cfg(target_os = "windows")]
pub extern "system" fn ExitDll() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_changes_list_the_hosts_queues_then_ours() {
        let merged = ComWrapper::new(MergedChanges {
            host: AtomicPtr::new(std::ptr::null_mut()),
            ours: AtomicUsize::new(2),
            points: (0..MAX_PER_BLOCK)
                .map(|_| ComWrapper::new(OnePoint::default()))
                .collect(),
        });
        merged.points[1].id.store(77, Ordering::Relaxed);
        merged.points[1].offset.store(12, Ordering::Relaxed);
        merged.points[1]
            .value
            .store(0.25f64.to_bits(), Ordering::Relaxed);
        let list = merged.as_com_ref::<IParameterChanges>().expect("interface");
        // SAFETY: our own objects.
        unsafe {
            assert_eq!(list.getParameterCount(), 2);
            let q = ComRef::from_raw(list.getParameterData(1)).expect("queue");
            assert_eq!(q.getParameterId(), 77);
            assert_eq!(q.getPointCount(), 1);
            let (mut offset, mut value) = (0, 0.0);
            assert_eq!(q.getPoint(0, &mut offset, &mut value), kResultOk);
            assert_eq!((offset, value), (12, 0.25));
            assert!(list.getParameterData(2).is_null());
            assert!(list.getParameterData(-1).is_null());
        }
    }

    #[test]
    fn layer_attaches_to_the_instance_nice_plug_constructs() {
        // Fails loudly if nice-plug stops constructing the plugin synchronously inside its
        // wrapper's constructor (the handoff the layer relies on).
        let component = create_instance().expect("component");
        let attached = component
            .planner
            .try_with(|p| p.is_attached())
            .expect("not busy");
        assert!(attached, "the VST3 layer did not get this instance's queue");
        assert!(
            component.steps.len() >= 16,
            "parameter step counts read from nice-plug"
        );
    }
}
