"""The hooks an omkit plug-in can implement.

A plug-in is any module or object with functions named like the specs below,
decorated with :data:`omkit.hookimpl`. Third-party packages expose one through
an entry point of group ``omkit``::

    # pyproject.toml of the third-party package
    [project.entry-points.omkit]
    my_attention = "my_package.plugin"

omkit's own built-ins (``omkit.plugins.*``) register through exactly these
hooks, so a third party can do anything a built-in does.

Every ``omkit_register_*`` hook receives a registry; the plug-in adds classes
to it with ``registry.add(name, cls)``. A name may be registered once: a second
plug-in that uses the same name is an error naming both. Hooks are called with
keyword arguments, so new arguments can be added to a spec later without
breaking plug-ins that do not ask for them (pluggy passes only the arguments an
implementation names).

Block a plug-in with the environment variable ``OMKIT_BLOCK_PLUGINS=name1,name2``
or ``omkit.setup_plugins(block=["name1"])``.
"""
from __future__ import annotations

import pluggy

PROJECT_NAME = "omkit"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- models -----------------------------------------------------------------

@hookspec
def omkit_register_backbones(registry):
    """Add backbone classes: ``registry.add("name", cls)``.

    A backbone is an ``nn.Module`` built as ``cls(in_channels=4, width=1.0, **kw)``
    that maps ``(B, in_channels, D, H, W)`` to shared features
    ``(B, out_channels, D, H, W)``; it exposes the int attribute ``out_channels``,
    and may expose:

    * ``min_divisor`` (int, default 1): every input side must be divisible by it
      (FusionNet3D: 8, its three 2x poolings); tiles, dense regions and crops are
      sized to it;
    * ``window_consistent = True``: in eval mode its output at a voxel depends on a
      bounded neighbourhood only (no GroupNorm, InstanceNorm, global pooling or other
      statistic over the input's extent). Only then do dense inference and
      window-consistent training run it (``omkit.models.window_protocol``);
      undeclared, the model runs tile inference and trains on patches.
    """


@hookspec
def omkit_register_attention(registry):
    """Add attention modules used by the task heads: ``registry.add("name", cls)``.

    Two kinds, told apart by the class attribute ``guided``:

    * ``guided = False`` (SE-like): ``cls(channels, **kw)`` maps features
      ``(B, C, D, H, W)`` to recalibrated features of the same shape; the task
      head wraps it as 3x3x3 conv + BN + ReLU -> attention -> 1x1x1 classifier.
    * ``guided = True`` (CGA-like): ``cls(channels, num_classes=K, **kw)`` is the
      whole head of a task: ``forward(features, guidance)`` takes the shared
      features and the preceding task's positive-category probability
      ``(B, 1, D, H, W)`` (no gradient flows into it) and returns logits
      ``(B, K, D, H, W)``.

    Either kind runs dense (window-consistent) inference and window-consistent
    training when it declares how it pools (``omkit.models.window_protocol``):
    ``pooled_terms`` and ``channel_scale`` (SE-like; subclass
    ``omkit.models.window_protocol.PooledChannelAttention``) or ``pooled_terms`` and
    ``block_maps`` (CGA-like; terms weighted by the guidance may be declared as
    ``guided_terms`` instead, which the window op weights itself). Undeclared, it runs
    tile inference.
    """


@hookspec
def omkit_register_presets(registry):
    """Add named model presets (:class:`omkit.models.presets.Preset` objects):
    ``registry.add("name", preset)``."""


# -- data -------------------------------------------------------------------

@hookspec
def omkit_register_samplers(registry):
    """Add training patch samplers: ``registry.add("name", cls)``.

    A sampler draws patch centres for one task from a preprocessed case;
    ``omkit.data.sampling`` defines the interface and the base classes to
    subclass, ``omkit.plugins.samplers`` the built-in task-1/2/3 samplers.
    """


@hookspec
def omkit_register_transforms(registry):
    """Add training patch transforms (augmentation): ``registry.add("name", cls)``.

    A transform is built as ``cls(**options)`` from an ``--augment`` spec and
    called as ``transform(sample, rng) -> sample`` on one training sample
    (``image``, ``label`` and, for ``mri+asymmetry``, ``mirror`` arrays), drawing
    from ``rng`` only; ``omkit.data.augment`` defines the interface and the base
    class, ``omkit.plugins.augment`` the built-ins (mirror, rotate, scale,
    elastic, intensity_scale, intensity_shift, gamma, noise, blur).
    """


@hookspec
def omkit_register_postprocessors(registry):
    """Add post-processing steps: ``registry.add("name", cls)``.

    A step is built as ``cls(**options)`` and called as
    ``step(labels, image) -> labels`` on an internal class map ``(D, H, W)``
    and the z-scored image ``(4, D, H, W)``; it has an int attribute ``order``
    (steps run in increasing order) and a bool ``default_enabled``.
    """

