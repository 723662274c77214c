-- Drive Ardour 7 headless (ardour7-lua, i.e. Ardour's "luasession") with Lockstep's VST3 on the
-- master bus, for Lockstep's end-to-end tests. Tested with Debian's ardour 7.3.
--
-- RUN IT ONLY INSIDE THE TEST NETWORK NAMESPACE: the plugin opens sockets as soon as it is
-- activated. See /tmp/ardour-findings.md (or the test that starts this) for the full recipe;
-- in short:
--   ardour-vst3-scanner -f -q "$VST3_DIR/Lockstep.vst3"    (absolute path, same private HOME)
--   LOCKSTEP_SESSION_DIR=$T/sess VST3_PATH=$VST3_DIR HOME=$T/home \
--   XDG_CONFIG_HOME=$T/home/.config XDG_CACHE_HOME=$T/home/.cache \
--     /tmp/netns.sh ardour7-lua tests/peers/ardour_session.lua
--
-- Environment:
--   LOCKSTEP_SESSION_DIR   session folder (required). "create": must not exist yet.
--   LOCKSTEP_SESSION_NAME  snapshot name (default "lockstep")
--   LOCKSTEP_OPEN          "create" (default: new session, plugin added to the master bus)
--                          or "load" (open the saved session, find the plugin on the master bus)
--   LOCKSTEP_RATE          sample rate for "create" (default 48000)
--   LOCKSTEP_BLOCK         engine buffer size in samples (default: the dummy backend's 1024)
--   LOCKSTEP_PLUGIN        VST3 plugin name (default "Lockstep")
--   VST3_PATH              folder holding Lockstep.vst3 (read by Ardour itself)
--
-- Protocol: after setup the script prints READY, then reads commands from stdin, one per line,
-- and answers each with lines that start with an upper-case keyword (every line is flushed at
-- once). Ardour itself prints a few other lines on stdout ("[WARNING]: Falling back to ...",
-- "lua/unknown direct dispatch of call slot ..."; "Butler drops pool trash" goes to stderr):
-- match on the keywords, ignore everything else. Commands are case-insensitive.
-- Parameter indices are Ardour's (0-based, the plugin's parameter order); values are plain
-- (not normalized) as Ardour shows them, e.g. Clock Offset -250..250.
--
--   (startup)            SESSION <created|loaded> <rate> <block size> <session file>
--                        PLUGIN <parameter count> <name>
--                        READY
--   PARAMS               PARAM <index> <value> <lower> <upper> <name>   (one per parameter)
--                        PARAMS_END <count>
--   GET <i>              VALUE <i> <value>
--   SET <i> <value>      VALUE <i> <value read back>
--   ROLL                 ROLLING <transport sample>   (once the transport really rolls)
--   STOP                 STOPPED <transport sample>
--   LOCATE <sample>      LOCATED <transport sample>   (stops the transport)
--   TRANSPORT            TRANSPORT <rolling 0|1> <sample> <speed>
--   WAIT <seconds>       WAITED <seconds> <rolling 0|1> <sample>
--   AUTO <i> <state>     AUTO <i> <state number>      state: Off Play Write Touch Latch
--   EVENTS <i>           EVENT <i> <time> <value> ... then EVENTS_END <i> <count>
--                        (time as Ardour prints it: plugin automation is in beat time here,
--                        "b<ticks>" with 1920 ticks a beat; "a<n>" would be audio time)
--   SAVE                 SAVED <session file>
--   RELOAD               closes the session WITHOUT saving and loads the saved state again:
--                        SESSION loaded ..., PLUGIN ..., RELOADED
--   SH <shell command>   runs it (inside the same namespace): SH| <line> ..., SH_END <ok>
--   QUIT (or EOF)        BYE, then the session is closed (not saved) and ardour7-lua exits 0
-- A command that fails answers ERR <message>; setup failures print FATAL <message> and exit 1.

local dir = os.getenv("LOCKSTEP_SESSION_DIR")
local name = os.getenv("LOCKSTEP_SESSION_NAME") or "lockstep"
local mode = os.getenv("LOCKSTEP_OPEN") or "create"
local rate = tonumber(os.getenv("LOCKSTEP_RATE") or "48000")
local plugin_name = os.getenv("LOCKSTEP_PLUGIN") or "Lockstep"
local block = tonumber(os.getenv("LOCKSTEP_BLOCK") or "")

local proc -- the plugin's processor (a PluginInsert) on the master bus

-- One answer line, flushed at once (stdout is a pipe: fully buffered otherwise).
local function emit(...)
	local parts = {}
	for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
	io.stdout:write(table.concat(parts, " "), "\n")
	io.stdout:flush()
end

local function num(v) return string.format("%.9g", v) end

local function fatal(msg)
	emit("FATAL", msg)
	os.exit(1)
end

local function transport()
	return Session:transport_rolling() and 1 or 0, Session:transport_sample()
end

-- Ardour's control (automation) object for plugin parameter i.
local function control(i)
	local ac = proc:to_automatable():automation_control(
		Evoral.Parameter(ARDOUR.AutomationType.PluginAutomation, 0, i), false)
	if ac:isnil() then error("no control for parameter " .. i) end
	return ac
end

local function param_count() return proc:to_insert():plugin(0):parameter_count() end

local function get_value(i)
	-- LuaAPI returns the value plus a table of the by-reference arguments ({proc, i, ok}).
	local v, refs = ARDOUR.LuaAPI.get_processor_param(proc, i, false)
	if not refs[3] then error("no parameter " .. i) end
	return v
end

-- Wait (up to `limit` seconds) until `done()` holds.
local function wait_for(done, limit)
	local waited = 0
	while not done() and waited < limit do
		sleep(0.01)
		waited = waited + 0.01
	end
	return done()
end

-- Open (or create) the session and find/insert the plugin; prints SESSION and PLUGIN.
local function open_session(how)
	local s
	if how == "create" then
		s = create_session(dir, name, rate)
	else
		s = load_session(dir, name)
	end
	if not s then fatal("cannot " .. how .. " session " .. dir .. " " .. name) end
	local master = Session:master_out()
	if how == "create" then
		proc = ARDOUR.LuaAPI.new_plugin(Session, plugin_name, ARDOUR.PluginType.VST3, "")
		if proc:isnil() then
			fatal("VST3 plugin '" .. plugin_name .. "' not found (VST3_PATH? scanner cache?)")
		end
		-- Index 0 = first among the visible processors (it lands after trim/polarity, pre-fader).
		if master:add_processor_by_index(proc, 0, nil, true) ~= 0 then
			fatal("cannot add the plugin to the master bus")
		end
	else
		proc = nil
		local n = 0
		while true do
			local p = master:nth_plugin(n)
			if p:isnil() then break end
			if p:display_name() == plugin_name then proc = p break end
			n = n + 1
		end
		if not proc then fatal("plugin '" .. plugin_name .. "' is not on the master bus") end
	end
	proc:activate()
	emit("SESSION", how == "create" and "created" or "loaded", Session:nominal_sample_rate(),
		Session:get_block_size(), dir .. "/" .. name .. ".ardour")
	emit("PLUGIN", param_count(), proc:display_name())
end

local function close()
	proc = nil
	collectgarbage() -- drop Lua's references to Ardour objects before the session goes away
	close_session()
end

local commands = {}

function commands.PARAMS()
	local plug = proc:to_insert():plugin(0)
	local n = plug:parameter_count()
	for i = 0, n - 1 do
		local _, refs = plug:get_parameter_descriptor(i, ARDOUR.ParameterDescriptor())
		local desc = refs[2]
		emit("PARAM", i, num(get_value(i)), num(desc.lower), num(desc.upper), plug:parameter_label(i))
	end
	emit("PARAMS_END", n)
end

function commands.GET(i)
	i = tonumber(i)
	emit("VALUE", i, num(get_value(i)))
end

function commands.SET(i, v)
	i, v = tonumber(i), tonumber(v)
	if not ARDOUR.LuaAPI.set_processor_param(proc, i, v) then error("cannot set parameter " .. i) end
	emit("VALUE", i, num(get_value(i)))
end

function commands.ROLL()
	Session:request_roll(ARDOUR.TransportRequestSource.TRS_UI)
	if not wait_for(function() return Session:transport_rolling() end, 5) then
		error("transport did not start")
	end
	emit("ROLLING", Session:transport_sample())
end

function commands.STOP()
	Session:request_stop(false, false, ARDOUR.TransportRequestSource.TRS_UI)
	wait_for(function() return Session:transport_stopped() end, 5)
	sleep(0.2) -- let the butler finish the stop (automation write passes end here)
	emit("STOPPED", Session:transport_sample())
end

function commands.LOCATE(sample)
	Session:request_locate(tonumber(sample), false, ARDOUR.LocateTransportDisposition.MustStop,
		ARDOUR.TransportRequestSource.TRS_UI)
	sleep(0.3)
	emit("LOCATED", Session:transport_sample())
end

function commands.TRANSPORT()
	local rolling, sample = transport()
	emit("TRANSPORT", rolling, sample, num(Session:transport_speed()))
end

function commands.WAIT(seconds)
	sleep(tonumber(seconds))
	emit("WAITED", seconds, transport())
end

function commands.AUTO(i, state)
	local s = ARDOUR.AutoState[state]
	if not s then error("unknown automation state " .. tostring(state)) end
	local ac = control(tonumber(i))
	ac:set_automation_state(s)
	emit("AUTO", i, ac:automation_state())
end

function commands.EVENTS(i)
	local n = 0
	for e in control(tonumber(i)):alist():events():iter() do
		emit("EVENT", i, e.when, num(e.value))
		n = n + 1
	end
	emit("EVENTS_END", i, n)
end

function commands.SAVE()
	local rv = Session:save_state("", false, false, false, false, false)
	if rv ~= 0 then error("save_state returned " .. rv) end
	emit("SAVED", dir .. "/" .. name .. ".ardour")
end

function commands.RELOAD()
	close()
	open_session("load")
	emit("RELOADED")
end

function commands.SH(rest)
	local pipe = io.popen(rest .. " 2>&1")
	for line in pipe:lines() do emit("SH|", line) end
	emit("SH_END", pipe:close() and "ok" or "failed")
end

-- Setup: the "None (Dummy)" backend is hidden in release builds until this option is off.
if not dir then fatal("LOCKSTEP_SESSION_DIR is not set") end
ARDOUR.config():set_hide_dummy_backend(false)
local backend = AudioEngine:set_backend("None (Dummy)", "", "")
if not backend or backend:isnil() then fatal("no dummy backend") end
if block and AudioEngine:set_buffer_size(block) ~= 0 then fatal("cannot set buffer size " .. block) end
open_session(mode)
emit("READY")

for line in io.lines() do
	local words = {}
	for w in line:gmatch("%S+") do words[#words + 1] = w end
	local cmd = (table.remove(words, 1) or ""):upper()
	if cmd == "QUIT" then break end
	if cmd ~= "" then
		local handler = commands[cmd]
		if not handler then
			emit("ERR", "unknown command " .. cmd)
		else
			local args = words
			if cmd == "SH" then args = { line:match("^%s*%S+%s+(.*)$") or "" } end
			local ok, err = pcall(handler, table.unpack(args))
			if not ok then emit("ERR", (tostring(err):gsub("\n", " "))) end
		end
	end
end

emit("BYE")
close()
quit()
