"""YOLO11 (detect / segment / pose) as plain torch modules, with BN folded into the convolutions,
loaded from the Ultralytics ONNX initializers (names match the Ultralytics state dict) or from an
Ultralytics ``.pt`` checkpoint without importing ``ultralytics`` (BN folded on load).

Every module's forward goes through an executor ``ex`` that provides the primitive ops (conv,
add, concat, split, max-pool, upsample, global ops). :class:`DenseExecutor` runs them as plain
torch; ``fluxshard_kernels.incremental`` runs them sparsely over cached, MV-warped feature maps.
"""

import ast
from typing import Dict, List, Tuple

import torch
from torch import nn
import torch.nn.functional as F


class DenseExecutor:
    """Runs the primitives densely (plain torch). Values are (1, C, H, W) tensors."""

    def conv(self, m: 'Conv', x):
        return m.dense(x)

    def conv2d(self, m: nn.Conv2d, x):
        return m(x)

    def add(self, name, a, b):
        return a + b

    def cat(self, name, xs):
        return torch.cat(xs, 1)

    def split(self, name, x, sizes):
        return list(torch.split(x, sizes, 1))

    def maxpool(self, name, x, k):
        return F.max_pool2d(x, k, 1, k // 2)

    def upsample(self, name, x):
        return F.interpolate(x, scale_factor=2.0, mode='nearest')

    def global_op(self, name, fn, x, stride, rows=None):
        return fn(x)

    def convtranspose(self, m: nn.ConvTranspose2d, x):
        return m(x)


DENSE = DenseExecutor()


class Block(nn.Module):
    """A YOLO11 building block: an ``nn.Module`` whose call is its ``forward`` (no hook
    dispatch). The incremental engine calls about a hundred of these a frame, and
    ``Module.__call__``'s checks cost more than a small layer's sparse work; hooks on these
    blocks are not supported (torch's own layers inside them keep theirs)."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Conv(Block):
    """Conv2d with folded BN (bias) and optional SiLU (Ultralytics ``Conv`` after fusing)."""

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        k = k[0] if isinstance(k, tuple) else k
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=True)
        self.act = act

    def dense(self, x):
        y = self.conv(x)
        return F.silu(y) if self.act else y

    def forward(self, x, ex=DENSE):
        return ex.conv(self, x)


def DWConv(c1, c2, k=1, s=1, act=True):  # noqa: N802 - Ultralytics name
    import math
    return Conv(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


class Bottleneck(Block):
    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x, ex=DENSE):
        y = self.cv2(self.cv1(x, ex), ex)
        return ex.add(self._fs_name + '.add', x, y) if self.add else y


class C3(Block):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, k=((1, 1), (3, 3)), e=1.0)
                                 for _ in range(n)))

    def forward(self, x, ex=DENSE):
        y = self.cv1(x, ex)
        for b in self.m:
            y = b(y, ex)
        return self.cv3(ex.cat(self._fs_name + '.cat', [y, self.cv2(x, ex)]), ex)


class C3k(C3):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, k=3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, k=(k, k), e=1.0)
                                 for _ in range(n)))


class C3k2(Block):
    """Ultralytics C3k2 (a C2f whose blocks are Bottleneck or C3k)."""

    def __init__(self, c1, c2, n=1, c3k=False, e=0.5, g=1, shortcut=True):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(C3k(self.c, self.c, 2, shortcut, g) if c3k else
                               Bottleneck(self.c, self.c, shortcut, g) for _ in range(n))

    def forward(self, x, ex=DENSE):
        y = ex.split(self._fs_name + '.split', self.cv1(x, ex), [self.c, self.c])
        for m in self.m:
            y.append(m(y[-1], ex))
        return self.cv2(ex.cat(self._fs_name + '.cat', y), ex)


class SPPF(Block):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.k = k

    def forward(self, x, ex=DENSE):
        y = [self.cv1(x, ex)]
        for i in range(3):
            y.append(ex.maxpool(f'{self._fs_name}.pool{i}', y[-1], self.k))
        return self.cv2(ex.cat(self._fs_name + '.cat', y), ex)


class Attention(Block):
    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        h = dim + self.key_dim * num_heads * 2
        self.qkv = Conv(dim, h, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        b, c, h, w = x.shape
        n = h * w
        qkv = self.qkv.dense(x)
        q, k, v = qkv.view(b, self.num_heads, self.key_dim * 2 + self.head_dim, n).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe.dense(v.reshape(b, c, h, w))
        return self.proj.dense(y)


class PSABlock(Block):
    def __init__(self, c, attn_ratio=0.5, num_heads=4, shortcut=True):
        super().__init__()
        self.attn = Attention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def dense(self, x):
        x = x + self.attn(x) if self.add else self.attn(x)
        y = self.ffn[1].dense(self.ffn[0].dense(x))
        return x + y if self.add else y

    def rows(self, x, sel):
        """(1, C, P) outputs of ``dense(x)`` at the flat pixel indices ``sel`` (P): the
        queries of those pixels only, against the keys and values of every pixel. The 1x1
        convs run as matrix products over (pixels, channels) rows (no conv dispatch; the
        channels-last input is already in that layout)."""
        a = self.attn
        b, c, h, w = x.shape
        n, nh, kd, hd = h * w, a.num_heads, a.key_dim, a.head_dim
        rows = x[0].permute(1, 2, 0).reshape(n, c)  # (n, C): a view when channels-last
        qkv = _rows_1x1(a.qkv, rows).view(n, nh, 2 * kd + hd)
        q, k, v = qkv[sel, :, :kd], qkv[:, :, kd:2 * kd], qkv[:, :, 2 * kd:]
        attn = (torch.einsum('phd,nhd->hpn', q, k) * a.scale).softmax(dim=-1)  # (H, P, n)
        y = torch.einsum('hpn,nhd->phd', attn, v).reshape(-1, c)  # (P, C), channel h*hd+d
        vimg = v.reshape(h, w, c).permute(2, 0, 1)[None]  # (1, C, h, w) channels-last view
        y = y + a.pe.dense(vimg).reshape(c, n)[:, sel].t()
        x1 = rows[sel] + _rows_1x1(a.proj, y) if self.add else _rows_1x1(a.proj, y)
        z = _rows_1x1(self.ffn[1], _rows_1x1(self.ffn[0], x1))
        out = x1 + z if self.add else z
        return out.t()[None]


def _rows_1x1(m: 'Conv', rows: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``Conv`` over (pixels, channels) rows: one matrix product (+ SiLU)."""
    wt = m.conv.weight.view(m.conv.out_channels, -1)
    y = torch.addmm(m.conv.bias, rows, wt.t()) if m.conv.bias is not None else rows @ wt.t()
    return F.silu(y) if m.act else y


class C2PSA(Block):
    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=self.c // 64)
                                 for _ in range(n)))

    def forward(self, x, ex=DENSE):
        a, b = ex.split(self._fs_name + '.split', self.cv1(x, ex), [self.c, self.c])

        def psa(t):
            for blk in self.m:
                t = blk.dense(t)
            return t
        # attention: global reach; one block can also be evaluated at some pixels only
        b = ex.global_op(self._fs_name + '.psa', psa, b, 32,
                         rows=self.m[0].rows if len(self.m) == 1 else None)
        return self.cv2(ex.cat(self._fs_name + '.cat', [a, b]), ex)


class Proto(Block):
    def __init__(self, c1, c_=256, c2=32):
        super().__init__()
        self.cv1 = Conv(c1, c_, 3)
        self.upsample = nn.ConvTranspose2d(c_, c_, 2, 2, 0, bias=True)
        self.cv2 = Conv(c_, c_, 3)
        self.cv3 = Conv(c_, c2)

    def forward(self, x, ex=DENSE):
        return self.cv3(self.cv2(ex.convtranspose(self.upsample, self.cv1(x, ex)), ex), ex)


def _seq(mods: nn.Sequential, x, ex):
    for m in mods:
        x = m(x, ex) if isinstance(m, (Conv, nn.Sequential)) is False and not isinstance(
            m, nn.Conv2d) else (ex.conv2d(m, x) if isinstance(m, nn.Conv2d) else
                                (_seq(m, x, ex) if isinstance(m, nn.Sequential) else m(x, ex)))
    return x


def make_anchors(shapes, strides, device, dtype, offset=0.5):
    anchors, stride_t = [], []
    for (h, w), s in zip(shapes, strides):
        sx = torch.arange(w, device=device, dtype=dtype) + offset
        sy = torch.arange(h, device=device, dtype=dtype) + offset
        yy, xx = torch.meshgrid(sy, sx, indexing='ij')
        anchors.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_t.append(torch.full((h * w, 1), s, dtype=dtype, device=device))
    return torch.cat(anchors).transpose(0, 1), torch.cat(stride_t).transpose(0, 1)


class Detect(Block):
    strides = (8, 16, 32)

    def __init__(self, nc=80, ch=()):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        self.no = nc + self.reg_max * 4
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(
            nn.Sequential(nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                          nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                          nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = nn.Conv2d(self.reg_max, 1, 1, bias=False)

    def branches(self, xs, ex):
        return [ex.cat(f'{self._fs_name}.out{i}', [_seq(self.cv2[i], x, ex),
                                                   _seq(self.cv3[i], x, ex)])
                for i, x in enumerate(xs)]

    def decode(self, feats: List[torch.Tensor]) -> torch.Tensor:
        """Per-level (1, no, h, w) -> (1, 4 + nc, A): boxes cx, cy, w, h (input px), scores."""
        shapes = [f.shape[2:] for f in feats]
        x = torch.cat([f.reshape(1, self.no, -1) for f in feats], 2)
        anchors, strides = make_anchors(shapes, self.strides, x.device, x.dtype)
        return self.decode_columns(x, anchors, strides)

    def decode_columns(self, x: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor
                       ) -> torch.Tensor:
        """(1, no, n) raw columns at anchors (2, n) and strides (1, n) -> (1, 4 + nc, n) (each
        column on its own: a subset of the anchors decodes to the same values). On the CPU
        one compiled pass (``compiled.decode_rows``, also the incremental head's), else
        ``decode_columns_torch``, its reference."""
        from fluxshard_kernels import compiled
        if x.is_cpu and x.dtype == torch.float32 and compiled.available():
            out = torch.empty((1, 4 + self.nc, x.shape[2]), dtype=x.dtype)
            compiled.decode_rows(x[0, :self.no], None, (anchors[0].contiguous(),
                                                        anchors[1].contiguous(),
                                                        strides[0].contiguous()),
                                 self.dfl_weights(), self.nc, out, columns=True)
            return out
        return self.decode_columns_torch(x, anchors, strides)

    def dfl_weights(self) -> torch.Tensor:
        """The DFL's R bin weights, contiguous float32 (found once)."""
        w = self.__dict__.get('_dflw')
        if w is None:
            w = self.__dict__['_dflw'] = self.dfl.weight.detach().reshape(-1).float() \
                .contiguous()
        return w

    def decode_columns_torch(self, x: torch.Tensor, anchors: torch.Tensor,
                             strides: torch.Tensor) -> torch.Tensor:
        """``decode_columns`` in torch ops (the reference; any device)."""
        box, cls = x.split((self.reg_max * 4, self.nc), 1)
        b, _, a = box.shape
        dist = self.dfl(box.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = anchors[None] - lt, anchors[None] + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class Segment(Detect):
    def __init__(self, nc=80, nm=32, npr=256, ch=()):
        super().__init__(nc, ch)
        self.nm = nm
        self.proto = Proto(ch[0], npr, nm)
        c4 = max(ch[0] // 4, nm)
        self.cv4 = nn.ModuleList(nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3),
                                               nn.Conv2d(c4, nm, 1)) for x in ch)


class Pose(Detect):
    def __init__(self, nc=1, kpt_shape=(17, 3), ch=()):
        super().__init__(nc, ch)
        self.kpt_shape = kpt_shape
        self.nk = kpt_shape[0] * kpt_shape[1]
        c4 = max(ch[0] // 4, self.nk)
        self.cv4 = nn.ModuleList(nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3),
                                               nn.Conv2d(c4, self.nk, 1)) for x in ch)

    def decode_kpts(self, kfeats: List[torch.Tensor]) -> torch.Tensor:
        shapes = [f.shape[2:] for f in kfeats]
        k = torch.cat([f.reshape(1, self.nk, -1) for f in kfeats], 2)
        anchors, strides = make_anchors(shapes, self.strides, k.device, k.dtype)
        return self.decode_kpt_columns(k, anchors, strides)

    def decode_kpt_columns(self, k: torch.Tensor, anchors: torch.Tensor,
                           strides: torch.Tensor) -> torch.Tensor:
        """(1, nk, n) raw keypoint columns -> (1, nk, n), as ``decode_columns``."""
        y = k.view(1, self.kpt_shape[0], 3, -1)
        a = (y[:, :, :2] * 2.0 + (anchors - 0.5)) * strides
        return torch.cat((a, y[:, :, 2:3].sigmoid()), 2).view(1, self.nk, -1)


class YOLO11(nn.Module):
    """YOLO11 with n/s/m-style width and depth; ``task`` picks the head.

    ``forward`` returns the raw head output as the ONNX export does: detect (1, 4 + nc, A);
    segment ((1, 4 + nc + 32, A), protos (1, 32, H/4, W/4)); pose (1, 4 + 1 + 51, A).
    """

    def __init__(self, task='detect', nc=80, width=0.25, depth=0.5, max_ch=1024):
        super().__init__()
        self.task = task

        def c(x):
            x = min(x, max_ch) * width
            return int(-(-x // 8) * 8)

        def d(n):
            return max(round(n * depth), 1)
        L = [  # noqa: N806 - the Ultralytics layer list
            Conv(3, c(64), 3, 2), Conv(c(64), c(128), 3, 2),
            C3k2(c(128), c(256), d(2), False, 0.25),
            Conv(c(256), c(256), 3, 2), C3k2(c(256), c(512), d(2), False, 0.25),
            Conv(c(512), c(512), 3, 2), C3k2(c(512), c(512), d(2), True),
            Conv(c(512), c(1024), 3, 2), C3k2(c(1024), c(1024), d(2), True),
            SPPF(c(1024), c(1024), 5), C2PSA(c(1024), c(1024), d(2)),
            nn.Identity(), nn.Identity(), C3k2(c(1024) + c(512), c(512), d(2), False),
            nn.Identity(), nn.Identity(), C3k2(c(512) + c(512), c(256), d(2), False),
            Conv(c(256), c(256), 3, 2), nn.Identity(),
            C3k2(c(256) + c(512), c(512), d(2), False),
            Conv(c(512), c(512), 3, 2), nn.Identity(),
            C3k2(c(512) + c(1024), c(1024), d(2), True),
        ]
        ch = (c(256), c(512), c(1024))
        if task == 'detect':
            L.append(Detect(nc, ch))
        elif task == 'segment':
            L.append(Segment(nc, 32, c(256), ch))
        elif task == 'pose':
            L.append(Pose(nc, (17, 3), ch))
        else:
            raise ValueError(f'unknown task {task!r}')
        self.model = nn.ModuleList(L)
        for name, m in self.named_modules():
            m._fs_name = name
        self.names: Dict[int, str] = {}

    #: Backbone layers whose outputs the neck reuses (skip connections).
    SKIPS = (4, 6, 10)

    def backbone(self, x, ex=DENSE, start: int = 0, stop: int = 10, y: dict = None):
        """Backbone layers ``start..stop`` (a sequential chain) from ``x``; returns the last
        output and ``y`` with the skip outputs (layers 4, 6, 10) computed so far. A model split
        after layer s sends ``y`` and resumes with ``backbone(y[s], ex, s + 1, 10, y)``."""
        y = {} if y is None else y
        for i in range(start, stop + 1):
            x = self.model[i](x, ex)
            if i in self.SKIPS:
                y[i] = x
        return x, y

    def neck_head(self, y: dict, ex=DENSE):
        """Neck and head branches from the backbone's skip outputs {4, 6, 10}."""
        m = self.model
        x = ex.upsample('model.11', y[10])
        x = m[13](ex.cat('model.12', [x, y[6]]), ex)
        y13 = x
        x = ex.upsample('model.14', x)
        p3 = x = m[16](ex.cat('model.15', [x, y[4]]), ex)
        x = m[17](x, ex)
        p4 = x = m[19](ex.cat('model.18', [x, y13]), ex)
        x = m[20](x, ex)
        p5 = m[22](ex.cat('model.21', [x, y[10]]), ex)
        head = m[23]
        out = {'det': head.branches([p3, p4, p5], ex)}
        if self.task in ('segment', 'pose'):
            out['extra'] = [_seq(head.cv4[i], f, ex) for i, f in enumerate([p3, p4, p5])]
        if self.task == 'segment':
            out['proto'] = head.proto(p3, ex)
        return out

    def features(self, x, ex=DENSE):
        """Backbone and neck; returns the head's inputs (P3, P4, P5) and the head branches."""
        _, y = self.backbone(x, ex)
        return self.neck_head(y, ex)

    def head_outputs(self, feats: dict):
        """Raw outputs (as the ONNX export) from dense head tensors."""
        head = self.model[23]
        det = head.decode(feats['det'])
        if self.task == 'detect':
            return det
        if self.task == 'pose':
            return torch.cat([det, head.decode_kpts(feats['extra'])], 1)
        mc = torch.cat([f.reshape(1, head.nm, -1) for f in feats['extra']], 2)
        return torch.cat([det, mc], 1), feats['proto']

    @torch.no_grad()
    def forward(self, x):
        return self.head_outputs(self.features(x, DENSE))

    def decode(self, raw, lb, conf: float = 0.25, iou: float = 0.45):
        """Raw head output (as ``forward``) -> Detections in source pixels."""
        from fluxshard_kernels.yolo.processing import decode
        if self.task == 'segment':
            out, protos = raw
            return decode(out[0].cpu().numpy(), lb, len(self.names), conf, iou,
                          protos=protos[0].cpu().numpy())
        return decode(raw[0].cpu().numpy(), lb, len(self.names), conf, iou,
                      nkpt=17 if self.task == 'pose' else 0)


def load_onnx(path: str, task: str = None) -> YOLO11:
    """YOLO11n from an Ultralytics ONNX export: weights from its initializers (BN folded),
    task/names from its metadata.

    Raises:
        ValueError: the file is not a YOLO11 export this code understands (names the key).
    """
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    task = task or meta.get('task', 'detect')
    names = {int(k): v for k, v in ast.literal_eval(meta.get('names', '{0: "0"}')).items()}
    model = YOLO11(task, nc=len(names))
    model.names = names
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
            for i in m.graph.initializer if i.name.startswith('model.')}
    _load_state(model, init, str(path))
    return model.eval()


def _load_state(model: YOLO11, state: Dict[str, torch.Tensor], src: str):
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith('dfl.weight')]
    if missing:
        raise ValueError(f'{src}: missing weights for {missing[:5]} ({len(missing)} in all)')
    for k, v in own.items():
        if k.endswith('dfl.weight') and k not in state:
            v.copy_(torch.arange(16, dtype=v.dtype).view(1, 16, 1, 1))
            continue
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f'{src}: {k} has shape {tuple(state[k].shape)}, '
                             f'expected {tuple(v.shape)}')
        v.copy_(state[k].to(v.dtype))


def load_ultralytics_pt(path: str) -> YOLO11:
    """YOLO11 from an Ultralytics ``.pt`` checkpoint without ``ultralytics``: the pickled
    modules are rebuilt as plain ``nn.Module`` stubs, their conv/BN pairs folded."""
    import pickle
    import types

    class _Stub(nn.Module):
        def __init__(self, *a, **k):
            nn.Module.__init__(self)

        def __setstate__(self, state):
            self.__dict__.update(state)

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module.startswith('ultralytics'):
                return type(name, (_Stub,), {})
            return super().find_class(module, name)

    pickle_module = types.ModuleType('fs_pickle')
    pickle_module.Unpickler = _Unpickler
    pickle_module.load = pickle.load
    ckpt = torch.load(str(path), map_location='cpu', weights_only=False,
                      pickle_module=pickle_module)
    net = ckpt.get('ema') or ckpt['model']
    names = getattr(net, 'names', None) or {0: 'person'}
    kpt = getattr(net, 'yaml', {}).get('kpt_shape') if hasattr(net, 'yaml') else None
    task = 'pose' if kpt else ('segment' if 'Segment' in type(net.model[-1]).__name__
                               else 'detect')
    state = {}
    for name, mod in net.named_modules():
        conv, bn = getattr(mod, 'conv', None), getattr(mod, 'bn', None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            w, b = _fold(conv, bn)
            state[f'{name}.conv.weight'], state[f'{name}.conv.bias'] = w, b
        elif isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)) and not name.endswith('.conv'):
            state[f'{name}.weight'] = mod.weight.detach().float()
            if mod.bias is not None:
                state[f'{name}.bias'] = mod.bias.detach().float()
    model = YOLO11(task, nc=len(names))
    model.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
    _load_state(model, state, str(path))
    return model.eval()


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach().float()
    std = (bn.running_var.float() + bn.eps).sqrt()
    scale = bn.weight.detach().float() / std
    b = bn.bias.detach().float() - bn.running_mean.float() * scale
    if conv.bias is not None:
        b = b + conv.bias.detach().float() * scale
    return w * scale.view(-1, 1, 1, 1), b


def load(task: str, path: str = '', device: str = 'cpu') -> YOLO11:
    """The one model loader of edge and server: YOLO11 for ``task`` from an ONNX file (the
    Ultralytics export) or an Ultralytics ``.pt``; ``path`` '' = YOLO11n for the task from the
    data folder. ValueError, saying what is wrong, for a missing or unreadable file or a model
    whose task is not ``task`` (checked from the file's own metadata)."""
    import os
    from fluxshard_kernels import data
    p = str(path or data.model_path(task))
    if not os.path.isfile(p):
        raise ValueError(f'model file {p} does not exist')
    try:
        m = load_ultralytics_pt(p) if p.endswith('.pt') else load_onnx(p)
    except Exception as e:  # noqa: B902 - any parse failure becomes one clear message
        kind = 'an Ultralytics .pt' if p.endswith('.pt') else 'a YOLO11 ONNX export'
        raise ValueError(f'cannot read model {p} as {kind}: {type(e).__name__}: '
                         f'{str(e)[:200]}') from None
    if m.task != task:
        raise ValueError(f'model {p} is a {m.task!r} model, but model.task is {task!r}')
    # channels-last weights: oneDNN then runs every conv in its fast NHWC path (dense torch
    # ~2x faster on CPU, measured beside onnxruntime by ``bench``; the same on CUDA tensor
    # cores), and they match the engine's channels-last block storage
    return m.to(device).to(memory_format=torch.channels_last)
