"""The latent codec: diffusers ``AutoencoderKLWan`` with Wan's latent normalisation.

Pixels are ``[B, 3, T, H, W]`` in [0, 1]; latents are normalised, ``(z - mean) / std`` per channel,
which is the space the transformer denoises in (as in ``WanPipeline``).
"""

from __future__ import annotations

import torch


def latent_frame_count(num_frames: int, temporal_factor: int = 4, round_up: bool = False) -> int:
    """Latent frames a causal video VAE makes of ``num_frames``: the first frame alone, then one per
    ``temporal_factor`` frames (Wan: 81 -> 21). ``round_up``: count a last partial group as a frame (the
    clip padded to :func:`pixel_frame_count` of the result, repeating its last frame)."""
    rest = num_frames - 1
    return 1 + (-(-rest // temporal_factor) if round_up else rest // temporal_factor)


def pixel_frame_count(num_latent_frames: int, temporal_factor: int = 4) -> int:
    """Video frames ``num_latent_frames`` decode to: ``1 + temporal_factor * (L - 1)`` (Wan: 21 -> 81)."""
    return 1 + temporal_factor * (num_latent_frames - 1)


class LatentCodec:
    def __init__(self, vae):
        self.vae = vae.eval()
        cfg = vae.config
        self.temporal_factor = int(getattr(cfg, "scale_factor_temporal", 4))
        self.spatial_factor = int(getattr(cfg, "scale_factor_spatial", 8))
        self.latent_channels = int(cfg.z_dim)
        self._mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)

    @property
    def device(self) -> torch.device:
        from filmweaver.offload import execution_device

        return execution_device(self.vae) or next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def fingerprint(self) -> str:
        """A short digest of the VAE's weights and normalisation: latents made by another VAE (or
        another normalisation) are recognised as such, whatever either model is called."""
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(self.vae.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
        h.update(self._mean.numpy().tobytes() + self._std.numpy().tobytes())
        return h.hexdigest()[:16]

    def num_latent_frames(self, num_frames: int) -> int:
        """Causal VAE: the first frame alone, then one latent frame per ``temporal_factor`` frames."""
        return latent_frame_count(num_frames, self.temporal_factor)

    def num_pixel_frames(self, num_latent_frames: int) -> int:
        return pixel_frame_count(num_latent_frames, self.temporal_factor)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.spatial_factor, width // self.spatial_factor

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self._mean.to(z)) / self._std.to(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self._std.to(z) + self._mean.to(z)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [0, 1] -> normalised latents ``[B, C, 1 + (T-1)//4, H/8, W/8]`` (posterior mode)."""
        x = (video.to(self.device, self.dtype) * 2.0 - 1.0)
        z = self.vae.encode(x).latent_dist.mode()
        return self.normalize(z.float())

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> ``[N, C, 1, h, w]``: each image on its own as one latent frame."""
        if not len(images):
            return torch.zeros(0)
        return torch.cat([self.encode(chunk[:, :, None]) for chunk in images.split(batch_size)])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, F, h, w]`` -> ``[B, 3, 1 + 4(F-1), H, W]`` in [0, 1]."""
        z = self.denormalize(latents.float()).to(self.device, self.dtype)
        video = self.vae.decode(z, return_dict=False)[0]
        return (video.float() / 2.0 + 0.5).clamp(0.0, 1.0)
