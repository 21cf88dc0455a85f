"""A reference of StoryMem's released input construction and sampling, written for these tests from
its code (Kevin-thu/StoryMem: ``wan/memory2video.py`` ``WanM2V.generate``, ``pipeline.py``,
``extract_keyframes.py``), in its own conventions: pixels in [-1, 1], tensors without a batch axis,
the model called as ``WanModel(x, t, context, y)`` with ``y = [mask 4 | condition 16]``.

Nothing here imports filmweaver's engine: the tests feed both the same model, VAE and images and
compare every tensor."""

import torch
import torch.nn.functional as F


def reference_mask(memory_size, frame_num, lat_h, lat_w, first_frame, motion_frames, fix_mem=None):
    msk = torch.ones(1, frame_num + memory_size, lat_h, lat_w)
    if fix_mem is not None and memory_size > fix_mem:
        msk[:, fix_mem:memory_size] = 2
    msk[:, memory_size:] = 0
    if first_frame:
        msk[:, memory_size] = 1
    if motion_frames:
        msk[:, memory_size:memory_size + 5] = 1
    msk = torch.concat([torch.repeat_interleave(msk[:, :memory_size + 1], repeats=4, dim=1),
                        msk[:, memory_size + 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)[0]


def reference_y(vae_encode, memory, frame_num, h, w, first_frame=None, motion_frames=None):
    """``memory [M, 3, H, W]`` and ``first_frame [3, H, W]`` / ``motion_frames [5, 3, H, W]`` in
    [-1, 1]; ``vae_encode([C, T, H, W]) -> [16, T', h, w]``. The released branch structure, bug
    included: with a first frame and no motion frames, ``u`` is overwritten by the grey video's."""
    if len(memory):
        memory = torch.cat([F.interpolate(img[None], size=(h, w), mode="bicubic") for img in memory], dim=0)
        memory = torch.stack([vae_encode(m[:, None])[:, 0] for m in memory], dim=1)  # C, M, h, w
    else:  # (the released code needs at least one memory image; the engine's first shot has none)
        memory = vae_encode(torch.zeros(3, 1, h, w))[:, :0]
    if first_frame is not None:
        u = vae_encode(torch.concat([F.interpolate(first_frame[None], size=(h, w), mode="bicubic").transpose(0, 1),
                                     torch.zeros(3, frame_num - 1, h, w)], dim=1))
    if motion_frames is not None:
        u = vae_encode(torch.concat([motion_frames.transpose(0, 1), torch.zeros(3, frame_num - 5, h, w)], dim=1))
    else:
        u = vae_encode(torch.zeros(3, frame_num, h, w))
    return torch.cat([memory, u], dim=1)


def reference_sample(model, scheduler, noise, y, context, context_null, guide_scale, boundary=None, low=None):
    """StoryMem's loop: both prompts through the model (expert by ``t >= boundary``), CFG, the solver
    over memory and video alike. Returns ``(final latent, [model input at every call])``."""
    latent, seen = noise, []
    for t in scheduler.timesteps:
        m = model if boundary is None or t.item() >= boundary else low
        x = torch.cat([latent, y], dim=0)[None]
        seen.append(x[0].clone())
        ts = t[None]
        cond = m(x, ts, context, return_dict=False)[0][0]
        uncond = m(x, ts, context_null, return_dict=False)[0][0]
        pred = uncond + guide_scale * (cond - uncond)
        latent = scheduler.step(pred[None], t, latent[None], return_dict=False)[0][0]
    return latent, seen


def reference_keyframe_indices(sims_to, num_frames, low_quality, threshold=0.9, max_keyframes=3, alpha=0.01):
    """``extract_keyframe_indices`` + the adaptive loop of ``save_keyframes``: ``sims_to(a, b)`` the
    similarity of frames a and b, ``low_quality[i]`` HPSv3 < 3."""
    while True:
        first = 0
        indices = None
        while low_quality[first]:
            first += 1
            if first >= num_frames:
                indices = []
                break
        if indices is None:
            indices, last = [first], first
            for i in range(2, num_frames):
                if sims_to(last, i) < threshold and not low_quality[i]:
                    indices.append(i)
                    last = i
        if len(indices) > max_keyframes:
            threshold -= alpha
        else:
            return indices


def reference_memory(bank_names, max_memory_size=10, fix=3):
    """pipeline.py's memory: every keyframe file in order, the first ``fix`` and the latest kept."""
    bank = sorted(bank_names)
    if len(bank) > max_memory_size:
        bank = bank[:fix] + bank[-(max_memory_size - fix):]
    return bank
