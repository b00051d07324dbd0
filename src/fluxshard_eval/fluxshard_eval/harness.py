"""Replay a bag's frames through one method on 1..N edges sharing one server and its ingress
link, on the modelled timeline (``sim``), and measure it against dense inference.

Timeline per edge: frame i arrives at i / rate; the edge takes the newest arrived frame when it
is free (older ones are dropped, "latest wins", and counted); its critical-path compute, then
each message over the link (FIFO, shared by all edges, at the link's rate, plus the one-way
delay; a streamer's publish blocks the edge until its bytes are on the wire, FluxShard's
queue on the link while the edge takes the next frame, its scheduler seeing the queue), then
the server (FIFO, shared), then the result back over the link. Background work (dense
refreshes) runs on its device (edge or server) in idle time and yields within one layer to
critical work (``sim.Resource``). A method with ``overlap`` (local inference on the edge's
accelerator beside its CPU front end, ``scheduler.overlap_local``) computes locally after the
device's queue while the front end takes the next frame: that frame is offloaded or, when
waiting for the device is faster, waits for it (the newest frame then wins). Accuracy is
judged on every processed frame that got a result.
"""

from dataclasses import asdict
import math
from typing import Callable, Dict, List, Optional

import numpy as np

from fluxshard_kernels import metrics
from fluxshard_eval import methods as M
from fluxshard_eval import sim


#: The scheduler's default deadline (``scheduler.deadline_ms``): a result later than this is a
#: deadline miss.
DEADLINE_MS = 100.0


class Reference:
    """Dense inference of the model on the true frames (computed once per frame, shared by
    every method and edge) and the sequence's ground truth when it has one."""

    def __init__(self, model, frames: List[np.ndarray], gt=None):
        self.model, self.frames, self.gt = model, frames, gt
        self._det: Dict[int, object] = {}

    def __getitem__(self, i):
        if i not in self._det:
            self._det[i] = M.dense_detect(self.model, self.frames[i])
        return self._det[i]


def _similarity(task, det, ref):
    if task == 'pose':
        return metrics.oks(det.keypoints, ref.keypoints, ref.boxes)
    return metrics.box_iou(det.boxes, ref.boxes)


class Scores:
    """Accuracy of one method's results against the dense reference: AP@0.5 pooled over all
    reference objects (class-aware matching, every object weighs the same: the retention), the
    same on confident references (score >= 0.5), the class-mean mAP@0.5 (noisy when a class
    appears in a few frames), mask IoU for segmentation; AP against ground truth."""

    def __init__(self, task):
        self.task = task
        self.ap = metrics.APAccumulator(0.5)
        self.ap_class = metrics.APAccumulator(0.5)
        self.ap_conf = metrics.APAccumulator(0.5)
        self.gt_ap = metrics.APAccumulator(0.5)
        self.gt_dense = metrics.APAccumulator(0.5)
        self.mask = []
        self.has_gt = False

    def add(self, det, ref, gt=None):
        sim_ = _similarity(self.task, det, ref)
        self.ap_class.add(sim_, det.class_ids, det.scores, ref.class_ids)
        self.ap.add_pooled(sim_, det.class_ids, det.scores, ref.class_ids)
        rs, dp = ref.scores >= 0.5, det.scores >= 0.4
        self.ap_conf.add_pooled(sim_[dp][:, rs], det.class_ids[dp], det.scores[dp],
                                ref.class_ids[rs])
        if self.task == 'segment':
            self.mask.append(metrics.matched_mask_iou(det.boxes, det.masks, ref.boxes,
                                                      ref.masks))
        if gt is not None and self.task != 'pose':
            self.has_gt = True
            gb, gc = gt
            for acc, dd in ((self.gt_ap, det), (self.gt_dense, ref)):
                sel = dd.class_ids == gc
                acc.add(metrics.box_iou(dd.boxes[sel], gb), np.full(sel.sum(), gc),
                        dd.scores[sel], np.full(len(gb), gc))

    def summary(self) -> dict:
        out = {'retention': self.ap.value(), 'retention_confident': self.ap_conf.value(),
               'retention_class_mean': self.ap_class.value()}
        if self.task == 'segment' and self.mask:
            out['mask_iou'] = float(np.nanmean(self.mask))
        if self.has_gt:
            out['gt_ap'] = self.gt_ap.value()
            out['gt_ap_dense'] = self.gt_dense.value()
        return out


def replay(factory: Callable[[str], M.Method], frames: List[np.ndarray], rate_hz: float,
           link: sim.LinkSpec, ref: Reference, edges: int = 1, seed: int = 0,
           progress: Optional[Callable[[int], None]] = None,
           deadline_ms: float = DEADLINE_MS) -> dict:
    """Run ``edges`` instances of a method (``factory(edge_id)``) over ``frames`` at
    ``rate_hz``; returns the run's numbers (see ``summarise``)."""
    net = sim.Link(link, seed)
    gpu = sim.Resource()
    rx = sim.Resource()  # the server's batch callback (one executor thread for every edge)
    n = len(frames)
    st = [{'m': factory(f'robot{e + 1}'), 'next': 0, 'free': e * 0.37 / rate_hz,
           'recs': [], 'results': [], 'dropped': 0, 'scores': None, 'bg_s': 0.0,
           'dev': sim.Resource(), 'dev_until': 0.0, 'ack': None}
          for e in range(edges)]
    for s in st:
        s['m'].camera(1.0 / rate_hz)
        s['scores'] = Scores(s['m'].model.task)
        s['scores_by'] = {}  # who computed a result -> Scores of those results
    while True:
        live = [s for s in st if s['next'] < n]
        if not live:
            break
        s = min(live, key=lambda s: max(s['free'], s['next'] / rate_hz))
        start = max(s['free'], s['next'] / rate_hz)
        j = min(n - 1, int(math.floor(start * rate_hz + 1e-9)))
        j = max(j, s['next'])
        s['dropped'] += j - s['next']
        m = s['m']
        m.link_queue(net.backlog(start))  # what the edge's transport still has to send
        m.now = start
        if m.overlap:  # local inference on its own device: the frame may go to the cloud
            w = m.edge(frames[j], j, max(0.0, s['dev_until'] - start))
            if w.deferred:  # it waits for the device (a newer frame then wins)
                if progress:
                    progress(j - s['next'])
                s['next'], s['free'] = j, s['dev_until']
                continue
        else:
            w = m.edge(frames[j], j)
        rec = sim.FrameRecord(j, j / rate_hz, hit_ratio=w.hit_ratio,
                              edge_compute=w.edge_compute, cpu_edge_ms=w.cpu_ms)
        if m.overlap:  # the front end extracts and sends; the device infers after its queue
            t_send = start + w.edge_s - w.device_s
            t_e = s['dev'].run(max(t_send, s['dev_until']), w.device_s) if w.device_s \
                else t_send
            s['dev_until'] = max(s['dev_until'], t_e)
        else:
            t_e = t_send = s['dev'].run(start, w.edge_s)  # one layer if its refresh runs
        delivered, t_arrive, t_wire = [], t_send, t_send
        for i, raw in enumerate(w.messages + w.async_messages):
            wire, arrive, ok = net.transmit(t_send, len(raw))
            if ok:  # the server ACKs on receipt: send -> ACK is queueing, transfer, round trip
                ack = arrive + link.delay_ms / 1e3
                # sent before the previous ACK: the node times it by the ACK spacing as well
                queued = s['ack'] is not None and s['ack'] > t_send
                m.observe_link(len(raw), ack - t_send, ack - s['ack'] if queued else None)
                s['ack'] = ack if s['ack'] is None else max(s['ack'], ack)
            delivered.append(ok)
            rec.uplink_bytes += len(raw)
            if i < len(w.messages):  # a reliable publish returns once its bytes left;
                t_wire = max(t_wire, wire)  # the opportunistic ones go out meanwhile
                t_arrive = max(t_arrive, arrive)
        srv = m.server(w, delivered) if delivered else M.ServerWork()
        rec.cpu_server_ms = srv.cpu_ms
        rec.server_compute = srv.server_compute
        rec.extra = dict(w.info, edge_s=w.edge_s, server_s=srv.server_s,
                         receive_s=srv.receive_s)
        if srv.result is not None:
            t_rx = rx.run(t_arrive, srv.receive_s) if srv.receive_s else t_arrive
            t_done = gpu.run(t_rx, srv.server_s)
            if srv.background_s:
                gpu.background(t_done, srv.background_s)
            rec.latency = t_done + net.back(srv.result_bytes) - rec.arrival
            rec.computed_by, result = 'server', srv.result
            m.delivered(j, rec.arrival + rec.latency)
        elif w.result is not None:
            rec.latency = max(t_e, w.ready_at) - rec.arrival
            rec.computed_by, result = w.computed_by, w.result
        else:
            rec.lost, result = True, None
        s['recs'].append(rec)
        s['results'].append(result)
        s['bg_s'] += w.background_s
        if w.background_s:
            s['dev'].background(t_e, w.background_s)
        # the edge's refresh yields to the next frame; a blocking publish holds the edge
        s['free'] = max(t_send, t_wire) if m.blocks_on_send else t_send
        if progress:
            progress(j + 1 - s['next'])
        s['next'] = j + 1
    for s in st:  # published in stamp order: a result later than a newer one is dropped
        drop_out_of_order(s['recs'])
        for rec, result in zip(s['recs'], s['results']):
            if result is None or rec.extra.get('dropped'):
                continue
            j = rec.index
            s['scores'].add(result, ref[j], ref.gt[j] if ref.gt is not None else None)
            s['scores_by'].setdefault(rec.computed_by, Scores(s['m'].model.task)).add(
                result, ref[j])
    out = summarise(st, n, rate_hz, net, deadline_ms)
    out['background_backlog_s'] = {'server': gpu.backlog,
                                   'edges': float(np.mean([s['dev'].backlog for s in st]))}
    for s in st:
        s['m'].close()
    return out


def _pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else math.nan


def drop_out_of_order(recs):
    """Results reach the result topic in stamp order (the nodes drop a result older than one
    already published, counted as ``dropped_out_of_order``): a record whose result would
    arrive after a newer frame's is marked dropped and loses its latency."""
    newest = -math.inf
    for r in sorted((r for r in recs if not math.isnan(r.latency)),
                    key=lambda r: (r.arrival + r.latency, r.index)):
        if r.index < newest:
            r.extra['dropped'] = 'out_of_order'
            r.extra['late_latency'] = r.latency
            r.latency = math.nan
        else:
            newest = r.index


def result_age(recs, n: int, rate_hz: float, step: Optional[float] = None):
    """What a consumer of the result topic holds at each camera frame: for frame i (at
    i / rate), the age of the newest result delivered by then (now minus its source frame's
    time; before any result, the time since the stream began); with ``step``, at every
    ``step`` seconds of the stream instead (what a consumer running at its own rate sees: at
    camera frames the age is a whole number of frame intervals). Also the results delivered
    after a newer one (out of stamp order). Returns (ages in seconds, out-of-order count)."""
    got = sorted((r.arrival + r.latency, r.arrival) for r in recs if not math.isnan(r.latency))
    ages, newest, k, late = [], -math.inf, 0, 0
    for done, src in got:  # out of order: delivered when a newer source was already out
        late += src < newest
        newest = max(newest, src)
    newest = -math.inf
    times = (np.arange(0.0, n / rate_hz, step) if step else np.arange(n) / rate_hz)
    for t in times:
        while k < len(got) and got[k][0] <= t + 1e-12:
            newest = max(newest, got[k][1])
            k += 1
        ages.append(t - newest if newest > -math.inf else t + 1.0 / rate_hz)
    return np.array(ages), late


def summarise(st, n, rate_hz, net, deadline_ms: float = DEADLINE_MS) -> dict:
    """Per-run numbers, averaged over edges where per edge."""
    recs = [r for s in st for r in s['recs']]
    lat = np.array([r.latency for r in recs if not math.isnan(r.latency)])
    aged = [result_age(s['recs'], n, rate_hz) for s in st]
    ages = np.concatenate([a for a, _ in aged]) if aged else np.zeros(0)
    dur = n / rate_hz
    e_c = sum(r.edge_compute for r in recs)
    s_c = sum(r.server_compute for r in recs)
    by = {}
    for r in recs:
        by[r.computed_by or 'lost'] = by.get(r.computed_by or 'lost', 0) + 1
    scores = [s['scores'].summary() for s in st]
    acc = {k: float(np.nanmean([sc[k] for sc in scores if k in sc]))
           for k in scores[0]} if scores else {}
    counted = sum(s['m'].sent_bytes for s in st)
    received = sum(s['m'].received_bytes for s in st)
    out = {
        'edges': len(st), 'frames': n, 'rate_hz': rate_hz,
        'processed': len(recs), 'dropped_edge_busy': sum(s['dropped'] for s in st),
        'lost_on_link': sum(r.lost for r in recs), 'link_messages_lost': net.lost,
        'dropped_out_of_order': sum(r.extra.get('dropped') == 'out_of_order' for r in recs),
        'computed_by': by,
        'latency_ms_mean': 1e3 * float(lat.mean()) if len(lat) else math.nan,
        'latency_ms_p50': 1e3 * _pct(lat, 50), 'latency_ms_p90': 1e3 * _pct(lat, 90),
        'latency_ms_p95': 1e3 * _pct(lat, 95),
        'served': int(len(lat)), 'served_fraction': len(lat) / max(n * len(st), 1),
        'deadline_ms': deadline_ms,
        # camera frames without a result by the deadline (late, dropped or lost)
        'deadline_miss_rate': 1.0 - int((lat <= deadline_ms / 1e3).sum()) / max(n * len(st), 1),
        'late_fraction': float((lat > deadline_ms / 1e3).mean()) if len(lat) else math.nan,
        'age_ms_p50': 1e3 * _pct(ages, 50), 'age_ms_p90': 1e3 * _pct(ages, 90),
        'age_ms_p90_any_time': 1e3 * _pct(np.concatenate(
            [result_age(s['recs'], n, rate_hz, 0.001)[0] for s in st]), 90),
        'results_out_of_order': int(sum(k for _, k in aged)),
        'bytes_counted': counted, 'bytes_on_link': net.bytes, 'bytes_received': received,
        'bandwidth_MBps': net.bytes / len(st) / dur / 1e6,
        'hit_ratio': float(np.mean([r.hit_ratio for r in recs])) if recs else math.nan,
        'edge_compute_share': e_c / (e_c + s_c) if e_c + s_c else math.nan,
        'edge_dense_equiv_per_frame': e_c / max(len(recs), 1),
        'server_dense_equiv_per_frame': s_c / max(len(recs), 1),
        'background_edge_s': sum(s['bg_s'] for s in st),
        'cpu_edge_ms_median': float(np.median([r.cpu_edge_ms for r in recs])) if recs else 0,
        'cpu_server_ms_median': float(np.median([r.cpu_server_ms for r in recs
                                                 if r.cpu_server_ms] or [0.0])),
    }
    out.update(acc)
    # retention of the results each side computed (edge, server, cache), over all edges' frames
    out['retention_by'] = {}
    for who in sorted({k for s in st for k in s['scores_by']}):
        vals = [s['scores_by'][who].summary()['retention'] for s in st if who in s['scores_by']]
        out['retention_by'][who] = float(np.nanmean(vals))
    # the server's image against the true frame, once past the first key (steady state)
    psnr = [r.extra['proxy_psnr'] for r in recs[5:] if 'proxy_psnr' in r.extra]
    psnr = [p for p in psnr if math.isfinite(p)]
    out['proxy_psnr_db'] = float(np.mean(psnr)) if psnr else math.nan
    out['per_frame'] = [asdict(r) for r in st[0]['recs']]
    return out
