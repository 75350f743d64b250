package replicate

import (
	"cmp"
	"errors"
	"slices"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/storage"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/shard"
)

// Handle serves POST /internal/v1/write: a peer's forwarded batch (or a
// replayed hint) is appended to the local storage and committed (fsynced)
// before the answer, which lists the samples the storage refused:
//
//	200  committed; body: the rejections (see WIRE.md)
//	400  malformed request
//	409  a referenced series id is unknown: resend self-contained
//	500  the local storage failed; nothing was committed
func (w *Writer) Handle(ctx *fasthttp.RequestCtx) {
	if !ctx.IsPost() {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, fasthttp.MethodPost)
		ctx.Error("POST only", fasthttp.StatusMethodNotAllowed)
		return
	}
	req, err := decodeRequest(w.dec, ctx.PostBody())
	if err != nil {
		ctx.Error(err.Error(), fasthttp.StatusBadRequest)
		return
	}
	defs, err := w.tables.resolve(req)
	if errors.Is(err, errResync) {
		ctx.Error(err.Error(), statusResync)
		return
	}
	if err != nil {
		ctx.Error(err.Error(), fasthttp.StatusBadRequest)
		return
	}
	rej, n, err := w.apply(ctx, req, defs)
	if err != nil {
		w.logger.Error("Replicated write failed", "sender", req.sender, "err", err)
		ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
		return
	}
	w.m.received.Add(float64(n))
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetBody(encodeResponse(rej))
}

// apply appends a decoded request and commits it. It returns the refused
// samples and the count of the others.
func (w *Writer) apply(ctx *fasthttp.RequestCtx, req *request, defs []*rdef) ([]rejection, int, error) {
	// Exemplars by sample; the encoder sends them sorted, a hostile sender
	// might not.
	slices.SortStableFunc(req.exemplars, func(a, b wireExemplar) int {
		if c := cmp.Compare(a.idx, b.idx); c != 0 {
			return c
		}
		return cmp.Compare(a.ex.Ts, b.ex.Ts)
	})
	exs := req.exemplars
	exemplarsFor := func(idx int) []exemplar.Exemplar {
		for len(exs) > 0 && exs[0].idx < idx {
			exs = exs[1:]
		}
		n := 0
		for n < len(exs) && exs[n].idx == idx {
			n++
		}
		if n == 0 {
			return nil
		}
		out := make([]exemplar.Exemplar, n)
		for i := range out {
			out[i] = exs[i].ex
		}
		exs = exs[n:]
		return out
	}

	app := w.local.AppenderV2(ctx)
	var rej []rejection
	written := 0
	outcome := func(idx int, d *rdef, r storage.SeriesRef, err error) error {
		if err == nil || isPartial(err) {
			d.ref.Store(uint64(r))
			written++
			return nil
		}
		reason := reasonOf(err)
		if reason == reasonOther && !errors.Is(err, shard.ErrInvalidLabels) {
			return err
		}
		rej = append(rej, rejection{idx: idx, reason: reason, msg: err.Error()})
		return nil
	}
	fi, hi := 0, len(req.floats)
	for si, s := range req.series {
		d := defs[si]
		var opts storage.AppendV2Options
		if s.meta >= 0 {
			opts.MetricFamilyName, opts.Metadata = req.metas[s.meta].family, req.metas[s.meta].meta
		}
		for range s.nf {
			f := &req.floats[fi]
			v := f.v // resolved
			opts.Exemplars = exemplarsFor(fi)
			r, err := app.Append(storage.SeriesRef(d.ref.Load()), d.ls, f.st, f.t, v, nil, nil, opts)
			if err := outcome(fi, d, r, err); err != nil {
				_ = app.Rollback()
				return nil, 0, err
			}
			fi++
		}
		for range s.nh {
			h := &req.hists[hi-len(req.floats)]
			var err error
			if h.h != nil {
				err = h.h.Validate()
			} else {
				err = h.fh.Validate()
			}
			if err != nil {
				rej = append(rej, rejection{idx: hi, reason: reasonInvalidHistogram, msg: err.Error()})
				hi++
				continue
			}
			opts.Exemplars = exemplarsFor(hi)
			r, err := app.Append(storage.SeriesRef(d.ref.Load()), d.ls, h.st, h.t, 0, h.h, h.fh, opts)
			if err := outcome(hi, d, r, err); err != nil {
				_ = app.Rollback()
				return nil, 0, err
			}
			hi++
		}
	}
	if err := app.Commit(); err != nil {
		return nil, 0, err
	}
	return rej, written, nil
}

// isPartial reports whether err only reports parts of a sample (exemplars)
// refused; a separate function keeps errors.As's target off the heap on the
// path without errors.
func isPartial(err error) bool {
	var partial *storage.AppendPartialError
	return errors.As(err, &partial)
}
