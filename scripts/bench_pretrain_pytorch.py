"""PyTorch baseline of one CIM pre-training step of the `tiny-respix` preset, timed like
`cim bench pretrain` (core/src/train/bench.rs): 3 untimed warm-up steps, then --steps
timed full steps; median ms and images/s. Plain eager PyTorch, float32, CPU.

Run (with `pip install torch`): python3 scripts/bench_pretrain_pytorch.py [--threads 2]
     [--batch 32] [--steps 10] [--sdpa] [--fused] [--compile]   (comma lists: one line each)

Not identical to the Rust step, and why it does not change the cost materially:
- Layout-only differences: the patch embedding is a stride-4 Conv2d (Rust: patchify +
  GEMM, same FLOPs); attention heads are split with view/transpose (Rust: gather_rows).
- Attention is explicit softmax(q·kᵀ/√d)·v by default, as Rust (--sdpa: PyTorch's fused
  scaled_dot_product_attention instead, what timm uses).
- Random numbers come from torch's generator, not the Philox streams of rng.rs, so masks
  and sampled tokens differ in value (same counts and shapes: k ~ U{33..39} of 64, Gumbel
  noise drawn at all N·L·V positions as Backend::sample_categorical does). Weights are
  random, as the Rust bench's (the tokenizer is not loaded there either).
- Optimizer: clip_grad_norm_ rescales the grads in place (one extra pass over 1.9 M floats;
  Rust folds the factor into its fused AdamW kernel); torch.optim.AdamW runs its CPU default
  per-tensor loop (--fused: fused=True), Rust one kernel over one flat buffer; grads are set
  to None, Rust zeroes its buffer. All tiny next to the model passes.
- One backward of MIM + 10·RESPIX (autograd sums the shared tensors' two contributions);
  Rust runs the enhancer's and the generator's backward passes into one buffer: same work.
  Neither computes image gradients (inputs do not require grad / backward_params).
Check: the printed trainable-parameter count (1,923,248) equals `cim bench pretrain`'s.
Timing caveat: OpenMP threads busy-wait; with other processes on the cores, 2-thread
PyTorch steps can be ~10× slower (OMP_WAIT_POLICY=PASSIVE helps). Use a quiet machine.
"""
import argparse, math, statistics, time
import torch, torch.nn as nn, torch.nn.functional as F

# ---- the preset: core/src/train/presets.rs tiny_respix, config.rs, cim/mod.rs ----------------
IMG, TOK_IMG, PATCH, WIDTH, DEPTH, HEADS, MLP_RATIO = 32, 16, 4, 192, 4, 3, 4.0  # EnhancerSpec default mlp_ratio 4
GEN_DEPTH, SHARED_BLOCKS, VOCAB = 2, 2, 512           # Beit::SHARED_BLOCKS = 2
GRID = IMG // PATCH; L = GRID * GRID                   # 8×8 = 64 tokens
MASK_MIN, MASK_MAX = ((2 * L * c + 196) // 392 for c in (100, 120))  # masking.rs scaled_range: 33..=39
RESPIX_K, TARGET_EPS, LOSS_W, TEMP = 8, 1e-6, 10.0, 1.0
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # arch.rs IMAGENET_MEAN / STD
LN_EPS = 1e-6                                          # vit.rs VitConfig::new (timm)
# dvae.rs DvaeConfig::small(): group_count 2, n_hid 64, n_blk_per_group 2, vocab 512, n_init 64
D_GROUPS, D_HID, D_BLK, D_INIT, LAPLACE_EPS = 2, 64, 2, 64, 0.1
# optim.rs / presets.rs: AdamW β (0.9, 0.98), eps 1e-8, wd 0.05, clip 3.0; lr 5e-4 → 1e-5, 25 warm-up
LR, MIN_LR, WARMUP, BETAS, ADAM_EPS, WD, CLIP = 5e-4, 1e-5, 25, (0.9, 0.98), 1e-8, 0.05, 3.0


# ---- ViT pieces: layers/block.rs, attention.rs, mlp.rs (timm's pre-norm Block, exact GELU) ----
class Block(nn.Module):
    def __init__(self, d, heads, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=LN_EPS), nn.LayerNorm(d, eps=LN_EPS)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)       # qkv_bias true
        hid = int(d * MLP_RATIO)
        self.fc1, self.fc2 = nn.Linear(d, hid), nn.Linear(hid, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:  # attention.rs: softmax(q·kᵀ·head_dim^-½)·v
            a = torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def trunc(*shape):  # Init::TIMM: truncated normal, std 0.02
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


class CimTrainable(nn.Module):
    """The trainable store (cim/model.rs CimModel::new): enhancer ViT (vit.rs), its RESPIX head
    (heads.rs RespixHead), and the generator BEiT (beit.rs new_shared) sharing patch_embed.proj
    and blocks 0..2 with the enhancer. BEiT here has no relative position bias, no layer scale."""
    def __init__(self, sdpa):
        super().__init__()
        # enhancer (vit.rs Vit::new, final_norm on)
        self.patch_embed = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.cls_token, self.pos_embed = trunc(1, 1, WIDTH), trunc(1, 1 + L, WIDTH)
        self.blocks = nn.ModuleList(Block(WIDTH, HEADS, sdpa) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(WIDTH, eps=LN_EPS)
        self.respix_head = nn.Linear(WIDTH, 3 * PATCH * PATCH)            # D → C·p·p
        # generator: own cls/mask token, pos_embed, blocks beyond the shared ones, norm, lm_head
        self.g_cls_token, self.g_mask_token, self.g_pos_embed = trunc(1, 1, WIDTH), trunc(1, 1, WIDTH), trunc(1, 1 + L, WIDTH)
        self.g_blocks = nn.ModuleList(Block(WIDTH, HEADS, sdpa) for _ in range(GEN_DEPTH - min(SHARED_BLOCKS, GEN_DEPTH)))
        self.g_norm = nn.LayerNorm(WIDTH, eps=LN_EPS)
        self.lm_head = nn.Linear(WIDTH, VOCAB)

    def embed(self, x, cls, pos, mask=None):  # vit.rs Embed::run
        x = self.patch_embed(x).flatten(2).transpose(1, 2)                 # [N, L, D], bias included
        if mask is not None:                                               # x·(1−m) + mask_token·m
            m = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - m) + self.g_mask_token * m
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], 1) + pos

    def generator(self, x, mask):  # beit.rs Beit::forward → logits [N, L, V]
        h = self.embed(x, self.g_cls_token, self.g_pos_embed, mask)
        for blk in list(self.blocks[:min(SHARED_BLOCKS, GEN_DEPTH)]) + list(self.g_blocks):
            h = blk(h)
        return self.lm_head(self.g_norm(h)[:, 1:])

    def enhancer(self, x):  # model.rs enhancer_forward: Vit::forward_features + RespixHead
        h = self.embed(x, self.cls_token, self.pos_embed)
        for blk in self.blocks:
            h = blk(h)
        y = self.respix_head(self.norm(h)[:, 1:])                          # [N, L, 3·p·p], (c, ki, kj)
        n = y.shape[0]                                                     # unpatchify → [N, 3, H, W]
        return y.view(n, GRID, GRID, 3, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(n, 3, IMG, IMG)


# ---- the frozen dVAE: models/dvae.rs (DALL-E encoder.py / decoder.py) --------------------------
def dconv(n_in, n_out, k):  # DALL-E Conv2d: padding (k−1)/2, normal std 1/sqrt(n_in·k²), zero bias
    c = nn.Conv2d(n_in, n_out, k, padding=(k - 1) // 2)
    nn.init.normal_(c.weight, std=1 / math.sqrt(n_in * k * k)); nn.init.zeros_(c.bias)
    return c


class DvaeBlock(nn.Module):  # id_path(x) + post_gain · res_path(x), post_gain = 1/n_layers²
    def __init__(self, n_in, n_out, kernels):
        super().__init__()
        hid, n_layers = n_out // 4, D_GROUPS * D_BLK
        self.id_path = dconv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        io = [(n_in, hid), (hid, hid), (hid, hid), (hid, n_out)]
        self.res = nn.Sequential(*[m for (a, b), k in zip(io, kernels) for m in (nn.ReLU(), dconv(a, b, k))])
        self.post_gain = 1.0 / n_layers ** 2

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res(x)


class DvaeEncoder(nn.Module):  # conv 7×7 → groups (EncoderBlock 3,3,3,1; max-pool between) → relu → 1×1
    def __init__(self):
        super().__init__()
        layers, n_in = [dconv(3, D_HID, 7)], D_HID
        for g in range(D_GROUPS):
            for _ in range(D_BLK):
                layers.append(DvaeBlock(n_in, D_HID << g, (3, 3, 3, 1))); n_in = D_HID << g
            if g + 1 < D_GROUPS:
                layers.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*layers, nn.ReLU(), dconv(n_in, VOCAB, 1))

    def forward(self, x):
        return self.net(x)


class DvaeDecoder(nn.Module):  # 1×1 vocab→n_init → groups (DecoderBlock 1,3,3,3; ×2 nearest) → relu → 1×1 → 6
    def __init__(self):
        super().__init__()
        self.input = dconv(VOCAB, D_INIT, 1)
        layers, n_in = [], D_INIT
        for g in range(D_GROUPS):
            w = D_HID << (D_GROUPS - 1 - g)
            for _ in range(D_BLK):
                layers.append(DvaeBlock(n_in, w, (1, 3, 3, 3))); n_in = w
            if g + 1 < D_GROUPS:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.net = nn.Sequential(*layers, nn.ReLU(), dconv(n_in, 6, 1))

    def decode_tokens(self, tokens):  # dvae.rs decode_tokens: = conv1x1(one_hot(t)), done as a row gather of Wᵀ
        h = F.embedding(tokens, self.input.weight.view(D_INIT, VOCAB).t()).permute(0, 3, 1, 2)
        return self.net(h + self.input.bias.view(1, -1, 1, 1))


def normalize(x):  # target.rs normalize_image
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def window_normalize(x, k, eps):  # target.rs window_normalize: rows i−k/2 ..= i+(k−1)/2, clipped, biased var
    h, w = x.shape[-2:]
    pool = lambda t: F.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False)[..., :h, :w]
    mean = pool(x)
    var = (pool(x * x) - mean * mean).clamp_min(0)
    return (x - mean) / torch.sqrt(var + eps)


def lr_at(step, total):  # schedule.rs LrSchedule::lr (bench: warm-up = min(25, total))
    wu = min(WARMUP, total)
    if step < wu:
        return LR * (step + 1) / wu
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * (step - wu) / max(total - wu, 1)))


def bench(threads, n, warmup, steps, sdpa, fused, compile_):
    torch.set_num_threads(threads); torch.manual_seed(0)
    model, enc, dec = CimTrainable(sdpa), DvaeEncoder().eval(), DvaeDecoder().eval()
    for p in list(enc.parameters()) + list(dec.parameters()):
        p.requires_grad_(False)                                            # frozen tokenizer store
    # optim.rs param_groups: decay rank ≥ 2, never cls_token / pos_embed / mask_token
    no_decay = lambda name, p: p.ndim < 2 or name.split(".")[-1] in ("cls_token", "pos_embed", "g_cls_token", "g_pos_embed", "g_mask_token")
    named = list(model.named_parameters())
    groups = [{"params": [p for nm, p in named if not no_decay(nm, p)], "weight_decay": WD},
              {"params": [p for nm, p in named if no_decay(nm, p)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=ADAM_EPS, **({"fused": True} if fused else {}))
    gen_f, enh_f = (torch.compile(model.generator), torch.compile(model.enhancer)) if compile_ else (model.generator, model.enhancer)
    ev, tv = torch.rand(n, 3, IMG, IMG), torch.rand(n, 3, TOK_IMG, TOK_IMG)  # fixed pixels, as bench.rs

    def step(i, total):  # cim/step.rs CimModel::step + optim.rs apply_optimizer
        enh, tok = ev.clone(), tv.clone()                                  # bench.rs: Tensor::from_slice per step
        k = torch.randint(MASK_MIN, MASK_MAX + 1, (n, 1))                  # RandomMasking: k ~ U{33..39}
        mask = torch.rand(n, L).argsort(1).argsort(1) < k
        with torch.no_grad():  # 1. golden tokens: frozen encoder on map_pixels(view), argmax (corrupt.rs)
            golden = enc(tok * (1 - 2 * LAPLACE_EPS) + LAPLACE_EPS).argmax(1).flatten(1)   # [N, L]
        x = normalize(enh)
        logits = gen_f(x, mask)                                            # 2. generator on the masked view
        ce = F.cross_entropy(logits.reshape(-1, VOCAB), golden.reshape(-1), reduction="none").view(n, L)
        masked = mask.sum()
        mim = (ce * mask).sum() / masked                                   # mean CE at masked positions
        with torch.no_grad():
            acc = ((logits.argmax(-1) == golden) & mask).sum() / masked    # mim_acc (step.rs reads argmax)
            u = torch.rand_like(logits).clamp_(1e-20, 1.0)                 # 3. Gumbel-max at every position
            sampled = (logits / TEMP - torch.log(-torch.log(u))).argmax(-1)
            corrupted = torch.where(mask, sampled, golden)                 # select_tokens
            out = dec.decode_tokens(corrupted.view(n, GRID, GRID))         # 4. frozen decoder
            img = ((torch.sigmoid(out[:, :3]) - LAPLACE_EPS) / (1 - 2 * LAPLACE_EPS)).clamp(0, 1)  # reconstruct
            img = F.interpolate(img, scale_factor=IMG // TOK_IMG, mode="nearest")  # nearest 16 → 32
            xc = normalize(img)                                            # plain input: no grad
            target = window_normalize(x, RESPIX_K, TARGET_EPS)             # RESPIX target of the original
        y = enh_f(xc)                                                      # 5. enhancer + RESPIX head
        l1, l2 = (y - target).abs().mean(), ((y - target) ** 2).mean()     # 6. L1 + L2
        loss = mim + LOSS_W * (l1 + l2)
        opt.zero_grad(set_to_none=True)
        loss.backward()                                                    # 7. both models' gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)           # global norm, clip 3.0
        for g in opt.param_groups:
            g["lr"] = lr_at(i, total)
        opt.step()
        return loss.item(), acc.item()

    times, total = [], warmup + steps
    for i in range(total):  # bench.rs: each step timed on its own, warm-up steps not kept
        t0 = time.perf_counter()
        loss, _ = step(i, total)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    assert math.isfinite(loss), loss
    nparams = sum(p.numel() for p in model.parameters())
    return statistics.median(times), statistics.mean(times), nparams, loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="2", help="comma list of torch.set_num_threads values")
    ap.add_argument("--batch", default="32", help="comma list of batch sizes")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of explicit")
    ap.add_argument("--fused", action="store_true", help="AdamW(fused=True)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd generator/enhancer")
    a = ap.parse_args()
    for mode in ["eager"] + (["compile"] if a.compile else []):
        for t in map(int, a.threads.split(",")):
            for n in map(int, a.batch.split(",")):
                try:
                    med, mean, npar, loss = bench(t, n, a.warmup, a.steps, a.sdpa, a.fused, mode == "compile")
                except Exception as e:  # torch.compile may lack a working toolchain
                    print(f"pytorch {torch.__version__} {mode}: threads {t}, batch {n}: failed: {type(e).__name__}: {str(e)[:200]}")
                    continue
                print(f"pytorch {torch.__version__} {mode}{' sdpa' if a.sdpa else ''}{' fused-adamw' if a.fused else ''}: "
                      f"threads {t}, batch {n}, {npar} params; step median {med:.1f} ms, mean {mean:.1f} ms; "
                      f"{n * 1e3 / med:.1f} images/s (last loss {loss:.3f})", flush=True)


if __name__ == "__main__":
    main()
