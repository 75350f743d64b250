package api

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"
)

// maxTSDBStatusLimit bounds the "limit" of /status/tsdb, as in Prometheus.
const maxTSDBStatusLimit = 10000

// runtimeInfo is the data of /api/v1/status/runtimeinfo, with Prometheus's
// field names. Kiln has no config reloads or block corruption checks, so
// those fields report the static truth: loaded once at start, no
// corruptions.
type runtimeInfo struct {
	StartTime           time.Time `json:"startTime"`
	CWD                 string    `json:"CWD"`
	Hostname            string    `json:"hostname"`
	ServerTime          time.Time `json:"serverTime"`
	ReloadConfigSuccess bool      `json:"reloadConfigSuccess"`
	LastConfigTime      time.Time `json:"lastConfigTime"`
	CorruptionCount     int64     `json:"corruptionCount"`
	GoroutineCount      int       `json:"goroutineCount"`
	GOMAXPROCS          int       `json:"GOMAXPROCS"`
	GOMEMLIMIT          int64     `json:"GOMEMLIMIT"`
	GOGC                string    `json:"GOGC"`
	GODEBUG             string    `json:"GODEBUG"`
	StorageRetention    string    `json:"storageRetention"`
}

func (a *API) serveRuntimeInfo(*request) apiFuncResult {
	info := runtimeInfo{
		StartTime:           a.deps.StartTime,
		ServerTime:          a.now().UTC(),
		ReloadConfigSuccess: true,
		LastConfigTime:      a.deps.StartTime,
		GoroutineCount:      runtime.NumGoroutine(),
		GOMAXPROCS:          runtime.GOMAXPROCS(0),
		GOMEMLIMIT:          debug.SetMemoryLimit(-1), // -1 reads without changing it
		GOGC:                os.Getenv("GOGC"),
		GODEBUG:             os.Getenv("GODEBUG"),
		StorageRetention:    a.deps.StorageRetention,
	}
	var err error
	if info.CWD, err = os.Getwd(); err != nil {
		info.CWD = "<error retrieving current working directory>"
	}
	if info.Hostname, err = os.Hostname(); err != nil {
		return apiFuncResult{data: info, err: &apiError{errorInternal, fmt.Errorf("get hostname: %w", err)}}
	}
	return apiFuncResult{data: info}
}

func (a *API) serveBuildInfo(*request) apiFuncResult {
	bi := a.deps.BuildInfo
	if bi.GoVersion == "" {
		bi.GoVersion = runtime.Version()
	}
	return apiFuncResult{data: bi}
}

func (a *API) serveFlags(*request) apiFuncResult {
	flags := a.deps.Flags
	if flags == nil {
		flags = map[string]string{}
	}
	return apiFuncResult{data: flags}
}

type configData struct {
	YAML string `json:"yaml"`
}

func (a *API) serveConfig(*request) apiFuncResult {
	var yaml string
	if a.deps.ConfigYAML != nil {
		yaml = a.deps.ConfigYAML()
	}
	return apiFuncResult{data: configData{YAML: yaml}}
}

func (a *API) serveTSDBStatus(r *request) apiFuncResult {
	limit := 10
	if s := r.formValue("limit"); s != "" {
		var err error
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 {
			return badData(errors.New("limit must be a positive number"))
		}
		if limit > maxTSDBStatusLimit {
			return badData(fmt.Errorf("limit must not exceed %d", maxTSDBStatusLimit))
		}
	}
	if a.deps.Stats == nil {
		return apiFuncResult{err: &apiError{errorInternal, errors.New("TSDB status is not available")}}
	}
	st, err := a.deps.Stats.TSDBStatus(r.ctx, limit)
	if err != nil {
		return apiFuncResult{err: &apiError{errorInternal, err}}
	}
	// Prometheus always sends the four lists as arrays, never null.
	st.SeriesCountByMetricName = topN(st.SeriesCountByMetricName, limit)
	st.LabelValueCountByLabelName = topN(st.LabelValueCountByLabelName, limit)
	st.MemoryInBytesByLabelName = topN(st.MemoryInBytesByLabelName, limit)
	st.SeriesCountByLabelValuePair = topN(st.SeriesCountByLabelValuePair, limit)
	return apiFuncResult{data: st}
}

func topN(s []TSDBStat, n int) []TSDBStat {
	if s == nil {
		return []TSDBStat{}
	}
	if len(s) > n {
		return s[:n]
	}
	return s
}
