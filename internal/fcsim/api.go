package fcsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/hearth-vm/hearth/internal/fcspec"
)

// Fault messages Firecracker uses for its state rules.
const (
	msgPostBoot       = "The requested operation is not supported after starting the microVM."
	msgPreBoot        = "The requested operation is not supported before starting the microVM."
	msgLoadNotAllowed = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
	msgIDMismatch     = "The id from the path does not match the id from the body!"
	msgDeserialize    = "An error occurred when deserializing the json body of a request: "
)

// apiError is a 400 answer with a fault_message.
type apiError struct {
	msg    string
	status int
	// exitCode >= 0 ends the process after the answer is sent, as
	// Firecracker does after a failed snapshot load.
	exitCode int
}

func (e *apiError) Error() string { return e.msg }

func faultf(format string, args ...any) *apiError {
	return &apiError{msg: fmt.Sprintf(format, args...), status: http.StatusBadRequest, exitCode: -1}
}

// opMetric maps an operationId to its request-counter prefix.
var opMetric = map[string]string{
	"createSyncAction":               "put_api_requests.actions",
	"putGuestBootSource":             "put_api_requests.boot_source",
	"putGuestDriveByID":              "put_api_requests.drive",
	"putLogger":                      "put_api_requests.logger",
	"putMachineConfiguration":        "put_api_requests.machine_cfg",
	"putCpuConfiguration":            "put_api_requests.cpu_cfg",
	"putMetrics":                     "put_api_requests.metrics",
	"putGuestNetworkInterfaceByID":   "put_api_requests.network",
	"putMmds":                        "put_api_requests.mmds",
	"putMmdsConfig":                  "put_api_requests.mmds",
	"putGuestVsock":                  "put_api_requests.vsock",
	"putBalloon":                     "put_api_requests.balloon",
	"createSnapshot":                 "put_api_requests.snapshot_create",
	"loadSnapshot":                   "put_api_requests.snapshot_load",
	"putEntropyDevice":               "put_api_requests.entropy",
	"putSerialDevice":                "put_api_requests.serial",
	"putGuestPmemByID":               "put_api_requests.pmem",
	"putMemoryHotplug":               "put_api_requests.hotplug_memory",
	"patchGuestDriveByID":            "patch_api_requests.drive",
	"patchGuestNetworkInterfaceByID": "patch_api_requests.network",
	"patchMachineConfiguration":      "patch_api_requests.machine_cfg",
	"patchMmds":                      "patch_api_requests.mmds",
	"patchBalloon":                   "patch_api_requests.balloon",
	"patchBalloonStatsInterval":      "patch_api_requests.balloon",
	"patchVm":                        "patch_api_requests.vm",
	"describeInstance":               "get_api_requests.instance_info",
	"getMachineConfiguration":        "get_api_requests.machine_cfg",
	"getMmds":                        "get_api_requests.mmds",
	"getFirecrackerVersion":          "get_api_requests.vmm_version",
	"getExportVmConfig":              "get_api_requests.vm_config",
	"describeBalloonConfig":          "get_api_requests.balloon",
	"describeBalloonStats":           "get_api_requests.balloon",
}

// ServeHTTP answers one API request. Firecracker keeps connections open
// (HTTP/1.1 keep-alive) and frames every answer with Content-Length; so
// does net/http for these small bodies.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, s.opts.MaxPayload+1))
	if err != nil {
		s.respond(w, r.Method, r.URL.Path, body, faultf("Cannot read the request body: %v", err))
		return
	}
	if int64(len(body)) > s.opts.MaxPayload {
		s.respond(w, r.Method, r.URL.Path, nil, faultf("Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, s.opts.MaxPayload))
		return
	}
	method, path := r.Method, r.URL.Path

	switch {
	case s.faults.match(s.faults.crash, method, path):
		s.reqlog.write(requestLogLine{Method: method, Path: path, Body: rawOrString(body), Event: "crash"})
		s.log.Error("injected crash", "method", method, "path", path)
		os.Exit(exitCrash)
	case s.faults.match(s.faults.hang, method, path), s.faults.hangs(method, path):
		s.reqlog.write(requestLogLine{Method: method, Path: path, Body: rawOrString(body), Event: "hang"})
		s.log.Warn("injected hang: never answering", "method", method, "path", path)
		select {
		case <-s.done:
		case <-r.Context().Done():
		}
		return
	case s.faults.match(s.faults.api, method, path):
		s.respond(w, method, path, body, faultf("injected failure"))
		return
	}

	result, err := s.handle(method, path, body)
	if err != nil {
		s.respond(w, method, path, body, err)
		return
	}
	s.respondOK(w, method, path, body, result)
}

// handle runs one request through Firecracker's parsing order: method and
// body presence, route, body schema, then the operation and its state
// rules.
func (s *Sim) handle(method, path string, body []byte) (any, error) {
	s.logf(3, "fc_api", "The API server received a %s request on %q.", method, path)
	empty := len(bytes.TrimSpace(body)) == 0
	switch method {
	case http.MethodGet:
		if !empty {
			return nil, faultf("GET request cannot have a body.")
		}
	case http.MethodPut:
		if empty {
			return nil, faultf("Empty PUT request.")
		}
	case http.MethodPatch:
		if empty && !strings.HasPrefix(path, "/balloon/hinting/") {
			return nil, faultf("Empty PATCH request.")
		}
	default:
		return nil, faultf("Invalid request method and/or path: %s %s.", method, path)
	}
	opID, params, err := s.spec.Route(method, path)
	if err != nil {
		return nil, faultf("Invalid request method and/or path: %s %s.", method, path)
	}
	metric := opMetric[opID]
	if metric != "" {
		s.metrics.inc(metric + "_count")
	}
	result, err := s.handleOp(opID, params, method, path, body)
	if err != nil && metric != "" && !strings.HasPrefix(metric, "get_") {
		s.metrics.inc(metric + "_fails")
	}
	return result, err
}

func (s *Sim) handleOp(opID string, params map[string]string, method, path string, body []byte) (any, error) {
	if err := s.spec.ValidateRequest(method, path, body); err != nil {
		var ve *fcspec.ValidationError
		if errors.As(err, &ve) {
			return nil, faultf("%s%s.", msgDeserialize, ve.Error())
		}
		return nil, faultf("%v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := handlers[opID]
	if !ok {
		return nil, faultf("Invalid request method and/or path: %s %s.", method, path)
	}
	return h(s, params, body)
}

// decode fills v from a validated body; what the schema cannot say (an
// unsigned field given a negative value) fails here, as serde would.
func decode(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return faultf("%s%v.", msgDeserialize, err)
	}
	return nil
}

func (s *Sim) respond(w http.ResponseWriter, method, path string, body []byte, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{msg: err.Error(), status: http.StatusBadRequest, exitCode: -1}
	}
	s.log.Warn("request refused", "method", method, "path", path, "status", ae.status, "fault", ae.msg)
	s.logf(1, "fc_api", "Received Error. Status code: %d. Message: %s", ae.status, ae.msg)
	out, _ := json.Marshal(map[string]string{"fault_message": ae.msg})
	// An explicit Content-Length keeps the framing Firecracker uses even
	// when the answer is flushed early (before a failed load exits).
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Server", "Firecracker API")
	w.WriteHeader(ae.status)
	_, _ = w.Write(out)
	s.reqlog.write(requestLogLine{Method: method, Path: path, Body: rawOrString(body), Status: ae.status, Fault: ae.msg})
	if ae.exitCode >= 0 {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		s.exit(ae.exitCode)
	}
}

func (s *Sim) respondOK(w http.ResponseWriter, method, path string, body []byte, result any) {
	w.Header().Set("Server", "Firecracker API")
	status := http.StatusNoContent
	if result != nil {
		out, err := json.Marshal(result)
		if err != nil {
			s.respond(w, method, path, body, faultf("encode response: %v", err))
			return
		}
		status = http.StatusOK
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(out)
	} else {
		w.WriteHeader(status)
	}
	s.log.Debug("request", "method", method, "path", path, "status", status)
	s.reqlog.write(requestLogLine{Method: method, Path: path, Body: rawOrString(body), Status: status})
}

type handler func(s *Sim, params map[string]string, body []byte) (any, error)

var handlers map[string]handler

func init() {
	handlers = map[string]handler{
		"describeInstance":               (*Sim).getInstance,
		"getFirecrackerVersion":          (*Sim).getVersion,
		"getMachineConfiguration":        (*Sim).getMachineConfig,
		"getExportVmConfig":              (*Sim).getVMConfig,
		"putMachineConfiguration":        (*Sim).putMachineConfig,
		"patchMachineConfiguration":      (*Sim).patchMachineConfig,
		"putGuestBootSource":             (*Sim).putBootSource,
		"putCpuConfiguration":            (*Sim).putCPUConfig,
		"putGuestDriveByID":              (*Sim).putDrive,
		"patchGuestDriveByID":            (*Sim).patchDrive,
		"putGuestNetworkInterfaceByID":   (*Sim).putNetworkInterface,
		"patchGuestNetworkInterfaceByID": (*Sim).patchNetworkInterface,
		"putGuestVsock":                  (*Sim).putVsock,
		"putBalloon":                     (*Sim).putBalloon,
		"patchBalloon":                   (*Sim).patchBalloon,
		"describeBalloonConfig":          (*Sim).getBalloon,
		"describeBalloonStats":           (*Sim).getBalloonStats,
		"patchBalloonStatsInterval":      (*Sim).patchBalloonStats,
		"startBalloonHinting":            (*Sim).balloonHinting,
		"stopBalloonHinting":             (*Sim).balloonHinting,
		"describeBalloonHinting":         (*Sim).getBalloonHinting,
		"putLogger":                      (*Sim).putLogger,
		"putMetrics":                     (*Sim).putMetrics,
		"putMmds":                        (*Sim).putMmds,
		"patchMmds":                      (*Sim).patchMmds,
		"getMmds":                        (*Sim).getMmds,
		"putMmdsConfig":                  (*Sim).putMmdsConfig,
		"putEntropyDevice":               (*Sim).putEntropy,
		"putSerialDevice":                (*Sim).putSerial,
		"putMemoryHotplug":               (*Sim).putMemoryHotplug,
		"patchMemoryHotplug":             (*Sim).patchMemoryHotplug,
		"getMemoryHotplug":               (*Sim).getMemoryHotplug,
		"putGuestPmemByID":               (*Sim).putPmem,
		"patchGuestPmemByID":             (*Sim).patchPmem,
		"createSyncAction":               (*Sim).action,
		"patchVm":                        (*Sim).patchVM,
		"createSnapshot":                 (*Sim).createSnapshot,
		"loadSnapshot":                   (*Sim).loadSnapshot,
	}
}

func (s *Sim) preBoot() error {
	if s.booted {
		return faultf(msgPostBoot)
	}
	return nil
}

func (s *Sim) postBoot() error {
	if !s.booted {
		return faultf(msgPreBoot)
	}
	return nil
}

// --- GET ---

func (s *Sim) getInstance(map[string]string, []byte) (any, error) {
	return map[string]string{"app_name": "Firecracker", "id": s.opts.ID, "state": s.state.String(), "vmm_version": Version()}, nil
}

func (s *Sim) getVersion(map[string]string, []byte) (any, error) {
	return map[string]string{"firecracker_version": Version()}, nil
}

func (s *Sim) getMachineConfig(map[string]string, []byte) (any, error) {
	return s.machine, nil
}

func (s *Sim) fullConfigLocked(withLogging bool) fullConfig {
	mc := s.machine
	fc := fullConfig{
		Balloon:           s.balloon,
		Drives:            append([]drive{}, s.drives...),
		BootSource:        s.boot,
		CPUConfig:         s.cpuConfig,
		MachineConfig:     &mc,
		MemoryHotplug:     s.memHotplug,
		MmdsConfig:        s.mmdsConfig,
		NetworkInterfaces: append([]networkInterface{}, s.nets...),
		Pmem:              s.pmem,
		Entropy:           s.entropy,
	}
	if s.vsock != nil {
		v := s.vsock.cfg
		fc.Vsock = &v
	}
	if withLogging {
		fc.Logger = s.loggerCfg
		fc.Metrics = s.metricsCfg
	}
	return fc
}

func (s *Sim) getVMConfig(map[string]string, []byte) (any, error) {
	return s.fullConfigLocked(true), nil
}

// --- machine configuration ---

func (s *Sim) checkMachineConfig(mc machineConfig) error {
	if mc.MemSizeMib == 0 {
		return faultf("The memory size (MiB) is invalid.")
	}
	if mc.VcpuCount == 0 || mc.VcpuCount > 32 || (mc.Smt && mc.VcpuCount > 1 && mc.VcpuCount%2 == 1) {
		return faultf("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if mc.HugePages == "2M" && mc.MemSizeMib%2 != 0 {
		return faultf("The memory size (MiB) must be a multiple of the huge page size (2 MiB) when huge pages are used.")
	}
	if s.balloon != nil && uint64(s.balloon.AmountMib) > mc.MemSizeMib {
		return faultf("The balloon target size (%d MiB) exceeds the memory size (%d MiB).", s.balloon.AmountMib, mc.MemSizeMib)
	}
	return nil
}

func (s *Sim) putMachineConfig(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	// PUT resets every optional field that is absent to its default.
	mc := machineConfig{HugePages: "None"}
	if err := decode(body, &mc); err != nil {
		return nil, err
	}
	if mc.HugePages == "" {
		mc.HugePages = "None"
	}
	if err := s.checkMachineConfig(mc); err != nil {
		return nil, err
	}
	s.machine = mc
	s.bootSpecific = true
	return nil, nil
}

func (s *Sim) patchMachineConfig(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	mc := s.machine
	if err := decode(body, &mc); err != nil {
		return nil, err
	}
	if err := s.checkMachineConfig(mc); err != nil {
		return nil, err
	}
	s.machine = mc
	s.bootSpecific = true
	return nil, nil
}

func (s *Sim) putCPUConfig(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	s.cpuConfig = compactJSON(body)
	s.bootSpecific = true
	return nil, nil
}

func compactJSON(b []byte) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return json.RawMessage(b)
	}
	return buf.Bytes()
}

// --- boot source ---

func (s *Sim) putBootSource(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var bs bootSource
	if err := decode(body, &bs); err != nil {
		return nil, err
	}
	if err := checkReadable(bs.KernelImagePath); err != nil {
		return nil, faultf("The kernel file cannot be opened: %v", err)
	}
	if bs.InitrdPath != nil {
		if err := checkReadable(*bs.InitrdPath); err != nil {
			return nil, faultf("The initrd file cannot be opened due to invalid path or invalid permissions. %v", err)
		}
	}
	s.boot = &bs
	s.bootSpecific = true
	return nil, nil
}

// checkReadable opens a file the way Firecracker would before using it.
func checkReadable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return osErr(err)
	}
	return f.Close()
}

func checkWritable(path string, readOnly bool) error {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return osErr(err)
	}
	return f.Close()
}

// osErr renders an error the way Rust's io::Error displays it, e.g.
// "No such file or directory (os error 2)".
func osErr(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		msg := errno.Error()
		return fmt.Errorf("%s (os error %d)", strings.ToUpper(msg[:1])+msg[1:], int(errno))
	}
	return err
}

// --- drives ---

func (s *Sim) putDrive(params map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var d drive
	if err := decode(body, &d); err != nil {
		return nil, err
	}
	if err := checkID(d.DriveID); err != nil {
		return nil, err
	}
	if d.DriveID != params["drive_id"] {
		return nil, faultf(msgIDMismatch)
	}
	if d.Socket == nil {
		if d.PathOnHost == nil {
			return nil, faultf("Unable to create the block device: path_on_host is required for a virtio-block device.")
		}
		ro := d.IsReadOnly != nil && *d.IsReadOnly
		if err := checkWritable(*d.PathOnHost, ro); err != nil {
			return nil, faultf("Unable to create the block device: cannot open backing file %s: %v", *d.PathOnHost, err)
		}
	}
	if d.IsRootDevice {
		for _, o := range s.drives {
			if o.IsRootDevice && o.DriveID != d.DriveID {
				return nil, faultf("A root block device already exists!")
			}
		}
	}
	s.setDriveLocked(d)
	s.metrics.addGroup("block_"+d.DriveID, blockMetrics)
	s.bootSpecific = true
	return nil, nil
}

// setDriveLocked inserts or replaces a drive; Firecracker keeps the root
// device first.
func (s *Sim) setDriveLocked(d drive) {
	out := s.drives[:0:0]
	for _, o := range s.drives {
		if o.DriveID != d.DriveID {
			out = append(out, o)
		}
	}
	if d.IsRootDevice {
		out = append([]drive{d}, out...)
	} else {
		out = append(out, d)
	}
	s.drives = out
}

func (s *Sim) patchDrive(params map[string]string, body []byte) (any, error) {
	if err := s.postBoot(); err != nil {
		return nil, err
	}
	var pd partialDrive
	if err := decode(body, &pd); err != nil {
		return nil, err
	}
	if pd.DriveID != params["drive_id"] {
		return nil, faultf(msgIDMismatch)
	}
	for i := range s.drives {
		d := &s.drives[i]
		if d.DriveID != pd.DriveID {
			continue
		}
		if pd.PathOnHost != nil {
			ro := d.IsReadOnly != nil && *d.IsReadOnly
			if err := checkWritable(*pd.PathOnHost, ro); err != nil {
				return nil, faultf("Unable to patch the block device: cannot open backing file %s: %v", *pd.PathOnHost, err)
			}
			d.PathOnHost = pd.PathOnHost
		}
		if pd.RateLimiter != nil {
			d.RateLimiter = compactJSON(pd.RateLimiter)
		}
		s.metrics.inc("block_" + d.DriveID + ".update_count")
		s.metrics.inc("block.update_count")
		return nil, nil
	}
	return nil, faultf("Unable to patch the block device: drive %q not found.", pd.DriveID)
}

var idCharsRE = regexp.MustCompile(`^[a-zA-Z0-9_]{1,64}$`)

// checkID applies Firecracker's device id rule (alphanumeric and
// underscores, at most 64 characters).
func checkID(id string) error {
	if !idCharsRE.MatchString(id) {
		return faultf("Invalid ID %q: it must be 1-64 characters of [a-zA-Z0-9_].", id)
	}
	return nil
}

// --- network interfaces ---

var macRE = regexp.MustCompile(`^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$`)

func (s *Sim) putNetworkInterface(params map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var n networkInterface
	if err := decode(body, &n); err != nil {
		return nil, err
	}
	if err := checkID(n.IfaceID); err != nil {
		return nil, err
	}
	if n.IfaceID != params["iface_id"] {
		return nil, faultf(msgIDMismatch)
	}
	if n.GuestMac != nil && !macRE.MatchString(*n.GuestMac) {
		return nil, faultf("%sinvalid MAC address %q.", msgDeserialize, *n.GuestMac)
	}
	for _, o := range s.nets {
		if o.IfaceID == n.IfaceID {
			continue
		}
		if o.HostDevName == n.HostDevName {
			return nil, faultf("Could not create the network device: the host device name %s is already in use.", n.HostDevName)
		}
		if n.GuestMac != nil && o.GuestMac != nil && strings.EqualFold(*o.GuestMac, *n.GuestMac) {
			return nil, faultf("Could not create the network device: the guest MAC address %s is already in use.", *n.GuestMac)
		}
	}
	replaced := false
	for i := range s.nets {
		if s.nets[i].IfaceID == n.IfaceID {
			s.nets[i] = n
			replaced = true
		}
	}
	if !replaced {
		s.nets = append(s.nets, n)
	}
	s.metrics.addGroup("net_"+n.IfaceID, netMetrics)
	s.bootSpecific = true
	return nil, nil
}

func (s *Sim) patchNetworkInterface(params map[string]string, body []byte) (any, error) {
	if err := s.postBoot(); err != nil {
		return nil, err
	}
	var p partialNetworkInterface
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	if p.IfaceID != params["iface_id"] {
		return nil, faultf(msgIDMismatch)
	}
	for i := range s.nets {
		if s.nets[i].IfaceID != p.IfaceID {
			continue
		}
		if p.RxRateLimiter != nil {
			s.nets[i].RxRateLimiter = compactJSON(p.RxRateLimiter)
		}
		if p.TxRateLimiter != nil {
			s.nets[i].TxRateLimiter = compactJSON(p.TxRateLimiter)
		}
		return nil, nil
	}
	return nil, faultf("Could not update the network device: interface %q not found.", p.IfaceID)
}

// --- vsock ---

func (s *Sim) putVsock(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var v vsockConfig
	if err := decode(body, &v); err != nil {
		return nil, err
	}
	if v.VsockID != nil {
		s.metrics.inc("deprecated_api.deprecated_http_api_calls")
	}
	// Firecracker binds the host socket when it creates the device, so
	// the socket exists (and a stale file is an error) right away.
	if s.vsock != nil {
		s.vsock.close()
		_ = os.Remove(s.vsock.cfg.UdsPath)
		s.vsock = nil
	}
	dev, err := newVsockDevice(s, v)
	if err != nil {
		s.metrics.inc("vsock.cfg_fails")
		return nil, faultf("Cannot create backend for vsock device: %v", err)
	}
	s.vsock = dev
	s.bootSpecific = true
	return nil, nil
}

// --- balloon ---

func (s *Sim) putBalloon(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var b balloonConfig
	if err := decode(body, &b); err != nil {
		return nil, err
	}
	if uint64(b.AmountMib) > s.machine.MemSizeMib {
		return nil, faultf("The balloon target size (%d MiB) exceeds the memory size (%d MiB).", b.AmountMib, s.machine.MemSizeMib)
	}
	s.balloon = &b
	s.bootSpecific = true
	return nil, nil
}

const msgNoBalloon = "No balloon device found."

func (s *Sim) patchBalloon(_ map[string]string, body []byte) (any, error) {
	if s.balloon == nil {
		return nil, faultf(msgNoBalloon)
	}
	var u struct {
		AmountMib uint32 `json:"amount_mib"`
	}
	if err := decode(body, &u); err != nil {
		return nil, err
	}
	if uint64(u.AmountMib) > s.machine.MemSizeMib {
		return nil, faultf("The balloon target size (%d MiB) exceeds the memory size (%d MiB).", u.AmountMib, s.machine.MemSizeMib)
	}
	if u.AmountMib > s.balloon.AmountMib {
		s.metrics.inc("balloon.inflate_count")
	} else if u.AmountMib < s.balloon.AmountMib {
		s.metrics.inc("balloon.deflate_count")
	}
	s.balloon.AmountMib = u.AmountMib
	return nil, nil
}

func (s *Sim) getBalloon(map[string]string, []byte) (any, error) {
	if s.balloon == nil {
		return nil, faultf(msgNoBalloon)
	}
	return s.balloon, nil
}

func (s *Sim) getBalloonStats(map[string]string, []byte) (any, error) {
	if s.balloon == nil {
		return nil, faultf(msgNoBalloon)
	}
	if s.balloon.StatsPollingIntervalS == 0 {
		return nil, faultf("Statistics for the balloon device are not enabled.")
	}
	pages := uint64(s.balloon.AmountMib) * 256
	total := s.machine.MemSizeMib << 20
	return map[string]uint64{
		"target_pages": pages, "actual_pages": pages,
		"target_mib": uint64(s.balloon.AmountMib), "actual_mib": uint64(s.balloon.AmountMib),
		"total_memory": total, "free_memory": total - uint64(s.balloon.AmountMib)<<20,
		"available_memory": total - uint64(s.balloon.AmountMib)<<20,
	}, nil
}

func (s *Sim) patchBalloonStats(_ map[string]string, body []byte) (any, error) {
	if s.balloon == nil {
		return nil, faultf(msgNoBalloon)
	}
	var u struct {
		Interval uint16 `json:"stats_polling_interval_s"`
	}
	if err := decode(body, &u); err != nil {
		return nil, err
	}
	if s.booted && (u.Interval == 0) != (s.balloon.StatsPollingIntervalS == 0) {
		return nil, faultf("Statistics cannot be turned on/off after boot.")
	}
	s.balloon.StatsPollingIntervalS = u.Interval
	return nil, nil
}

func (s *Sim) balloonHinting(map[string]string, []byte) (any, error) {
	if s.balloon == nil {
		return nil, faultf(msgNoBalloon)
	}
	if !s.balloon.FreePageHinting {
		return nil, faultf("Free page hinting was not enabled when the device was configured.")
	}
	if err := s.postBoot(); err != nil {
		return nil, err
	}
	return nil, nil
}

func (s *Sim) getBalloonHinting(map[string]string, []byte) (any, error) {
	if s.balloon == nil {
		return nil, faultf(msgNoBalloon)
	}
	if !s.balloon.FreePageHinting {
		return nil, faultf("Free page hinting was not enabled when the device was configured.")
	}
	return map[string]uint32{"host_cmd": 0, "guest_cmd": 0}, nil
}

// --- logger and metrics ---

func (s *Sim) putLogger(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var c loggerConfig
	if err := decode(body, &c); err != nil {
		return nil, err
	}
	if err := s.configureLogger(c); err != nil {
		return nil, err
	}
	return nil, nil
}

// configureLogger sets up Firecracker's log once, as Firecracker allows.
func (s *Sim) configureLogger(c loggerConfig) error {
	if s.loggerCfg != nil {
		return faultf("Logger can only be configured once.")
	}
	level := 3 // Info, the spec's default
	if c.Level != nil {
		l, ok := parseLevel(*c.Level)
		if !ok {
			return faultf("Invalid log level %q.", *c.Level)
		}
		level = l
	}
	l := &fcLogger{level: level, id: s.opts.ID}
	if c.ShowLevel != nil {
		l.showLevel = *c.ShowLevel
	}
	if c.ShowLogOrigin != nil {
		l.showOrigin = *c.ShowLogOrigin
	}
	if c.LogPath != nil {
		sk, err := openSink(*c.LogPath, s.opts.FifoOpenTimeout)
		if err != nil {
			return faultf("Failed to open target file: %v", osErr(err))
		}
		l.sink = sk
	}
	s.fclog.Store(l)
	s.loggerCfg = &c
	return nil
}

func (s *Sim) putMetrics(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var c metricsConfig
	if err := decode(body, &c); err != nil {
		return nil, err
	}
	if err := s.configureMetrics(c); err != nil {
		return nil, err
	}
	return nil, nil
}

func (s *Sim) configureMetrics(c metricsConfig) error {
	if s.metricsCfg != nil {
		return faultf("Reinitialization of metrics not allowed.")
	}
	sk, err := openSink(c.MetricsPath, s.opts.FifoOpenTimeout)
	if err != nil {
		return faultf("Cannot initialize the metrics system: %v", osErr(err))
	}
	s.metricsSink = sk
	s.metricsCfg = &c
	return nil
}

// --- MMDS ---

func (s *Sim) putMmds(_ map[string]string, body []byte) (any, error) {
	var v any
	if err := decode(body, &v); err != nil {
		return nil, err
	}
	s.mmdsData = v
	return nil, nil
}

func (s *Sim) patchMmds(_ map[string]string, body []byte) (any, error) {
	if s.mmdsData == nil {
		return nil, faultf("The MMDS data store is not initialized.")
	}
	var patch any
	if err := decode(body, &patch); err != nil {
		return nil, err
	}
	s.mmdsData = mergePatch(s.mmdsData, patch)
	return nil, nil
}

// mergePatch applies an RFC 7396 JSON merge patch, which is what
// Firecracker does for PATCH /mmds.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}

func (s *Sim) getMmds(map[string]string, []byte) (any, error) {
	if s.mmdsData == nil {
		return map[string]any{}, nil
	}
	return s.mmdsData, nil
}

func (s *Sim) putMmdsConfig(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var c struct {
		NetworkInterfaces []string `json:"network_interfaces"`
	}
	if err := decode(body, &c); err != nil {
		return nil, err
	}
	if len(c.NetworkInterfaces) == 0 {
		return nil, faultf("The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range c.NetworkInterfaces {
		found := false
		for _, n := range s.nets {
			found = found || n.IfaceID == id
		}
		if !found {
			return nil, faultf("The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	s.mmdsConfig = compactJSON(body)
	s.bootSpecific = true
	return nil, nil
}

// --- other devices ---

func (s *Sim) putEntropy(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	s.entropy = compactJSON(body)
	s.bootSpecific = true
	return nil, nil
}

func (s *Sim) putSerial(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var c struct {
		SerialOutPath *string `json:"serial_out_path"`
	}
	if err := decode(body, &c); err != nil {
		return nil, err
	}
	if c.SerialOutPath != nil {
		f, err := os.OpenFile(*c.SerialOutPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, faultf("Cannot open the serial output file: %v", osErr(err))
		}
		s.console = &consoleWriter{w: f}
		s.serialPath = *c.SerialOutPath
	}
	s.bootSpecific = true
	return nil, nil
}

func (s *Sim) putMemoryHotplug(_ map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	s.memHotplug = compactJSON(body)
	s.bootSpecific = true
	return nil, nil
}

func (s *Sim) patchMemoryHotplug(_ map[string]string, body []byte) (any, error) {
	if err := s.postBoot(); err != nil {
		return nil, err
	}
	if s.memHotplug == nil {
		return nil, faultf("The memory hotplug device is not configured.")
	}
	return nil, nil
}

func (s *Sim) getMemoryHotplug(map[string]string, []byte) (any, error) {
	if s.memHotplug == nil {
		return nil, faultf("The memory hotplug device is not configured.")
	}
	var c map[string]any
	_ = json.Unmarshal(s.memHotplug, &c)
	c["plugged_size_mib"] = 0
	c["requested_size_mib"] = 0
	return c, nil
}

func (s *Sim) putPmem(params map[string]string, body []byte) (any, error) {
	if err := s.preBoot(); err != nil {
		return nil, err
	}
	var p pmemConfig
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	if p.ID != params["id"] {
		return nil, faultf(msgIDMismatch)
	}
	if err := checkWritable(p.PathOnHost, p.ReadOnly); err != nil {
		return nil, faultf("Unable to create the pmem device: cannot open backing file %s: %v", p.PathOnHost, err)
	}
	out := s.pmem[:0:0]
	for _, o := range s.pmem {
		if o.ID != p.ID {
			out = append(out, o)
		}
	}
	s.pmem = append(out, p)
	s.bootSpecific = true
	return nil, nil
}

func (s *Sim) patchPmem(params map[string]string, body []byte) (any, error) {
	if err := s.postBoot(); err != nil {
		return nil, err
	}
	var p struct {
		ID string `json:"id"`
	}
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	if p.ID != params["id"] {
		return nil, faultf(msgIDMismatch)
	}
	for _, o := range s.pmem {
		if o.ID == p.ID {
			return nil, nil
		}
	}
	return nil, faultf("Unable to patch the pmem device: device %q not found.", p.ID)
}
