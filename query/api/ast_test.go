package api

import (
	"net/http"
	"testing"
)

func testParseQuery(t *testing.T, env *testEnv) {
	f := func(query, wantData string) {
		t.Helper()
		env.requireJSON(t, "/api/v1/parse_query?query="+q(query), http.StatusOK, `{"status":"success","data":`+wantData+`}`)
	}
	f(`up`, `{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"up"}],"name":"up","offset":0,"offsetExpr":null,`+
		`"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"vectorSelector"}`)
	f(`1.5`, `{"type":"numberLiteral","val":"1.5"}`)
	f(`"s"`, `{"type":"stringLiteral","val":"s"}`)
	f(`-(up)`, `{"expr":{"expr":{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"up"}],"name":"up","offset":0,"offsetExpr":null,`+
		`"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"vectorSelector"},"type":"parenExpr"},"op":"-","type":"unaryExpr"}`)
	f(`sum without (instance) (rate(http_requests_total{code="200"}[5m] offset 1m))`,
		`{"expr":{"args":[{"anchored":false,"matchers":[{"name":"code","type":"=","value":"200"},{"name":"__name__","type":"=","value":"http_requests_total"}],`+
			`"name":"http_requests_total","offset":60000,"offsetExpr":null,"range":300000,"rangeExpr":null,"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"matrixSelector"}],`+
			`"func":{"argTypes":["matrix"],"name":"rate","returnType":"vector","variadic":0},"type":"call"},`+
			`"grouping":["instance"],"op":"sum","param":null,"type":"aggregation","without":true}`)
	f(`topk(2, up)`,
		`{"expr":{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"up"}],"name":"up","offset":0,"offsetExpr":null,`+
			`"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"vectorSelector"},`+
			`"grouping":[],"op":"topk","param":{"type":"numberLiteral","val":"2"},"type":"aggregation","without":false}`)
	f(`up / on(job) group_left(code) http_requests_total`,
		`{"bool":false,"lhs":{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"up"}],"name":"up","offset":0,"offsetExpr":null,`+
			`"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"vectorSelector"},`+
			`"matching":{"card":"many-to-one","fillValues":{"lhs":null,"rhs":null},"include":["code"],"labels":["job"],"on":true},"op":"/",`+
			`"rhs":{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"http_requests_total"}],"name":"http_requests_total","offset":0,"offsetExpr":null,`+
			`"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"vectorSelector"},"type":"binaryExpr"}`)
	f(`1 > bool 2`,
		`{"bool":true,"lhs":{"type":"numberLiteral","val":"1"},"matching":null,"op":"\u003e","rhs":{"type":"numberLiteral","val":"2"},"type":"binaryExpr"}`)
	f(`up[10m:1m] @ 100`,
		`{"expr":{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"up"}],"name":"up","offset":0,"offsetExpr":null,`+
			`"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"vectorSelector"},`+
			`"offset":0,"offsetExpr":null,"range":600000,"rangeExpr":null,"startOrEnd":null,"step":60000,"stepExpr":null,"timestamp":100000,"type":"subquery"}`)
	f(`up @ end()`, `{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"up"}],"name":"up","offset":0,"offsetExpr":null,`+
		`"smoothed":false,"startOrEnd":"end","timestamp":null,"type":"vectorSelector"}`)
	// Duration expressions are enabled, as in Prometheus v0.315. They are
	// only evaluated when a query runs, so the parsed range is still 0.
	f(`up[5m+1m]`, `{"anchored":false,"matchers":[{"name":"__name__","type":"=","value":"up"}],"name":"up","offset":0,"offsetExpr":null,`+
		`"range":0,"rangeExpr":{"lhs":{"duration":true,"type":"numberLiteral","val":"300"},"op":"+","rhs":{"duration":true,"type":"numberLiteral","val":"60"},"type":"durationExpr","wrapped":false},`+
		`"smoothed":false,"startOrEnd":null,"timestamp":null,"type":"matrixSelector"}`)

	env.requireJSON(t, "/api/v1/parse_query?query="+q("up{"), http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:4: parse error: unexpected end of input inside braces"}`)
}
