"""One draw for a whole population from a per-particle law.

A per-particle (``vectorized=False``) state-space model describes the transition of one
particle; the library used to draw each particle with a key of its own
(``prng.particle_keys``: ``jax.random.split(key, N)``), which costs a Threefry hash per
particle for the key before the one for the draw: on the 1-D bootstrap filter at
``N = 1e5`` that made the default path 1.2-1.4x the vectorized one (issue #19). For the
laws whose batched form NumPyro builds exactly, the transition is instead constructed for
the whole batch under ``jax.vmap`` (NumPyro distributions are pytrees), its batch shape
set from the batched parameters (``numpyro.distributions.batch_util.promote_batch_shape``)
and sampled with one key, as a vectorized model's transition is: the same law, one hash
per particle.

Only laws whose sampler is an affine map of standard normals of the batch shape are
batched (``BATCHABLE``: ``Normal``, ``MultivariateNormal`` and ``Independent`` wrappers
of them); anything else (another law, a batch shape that does not come out as ``(N,)``)
keeps the per-particle keys, so a law NumPyro cannot batch is never sampled wrongly.

A law with no per-particle parameters (a model's initial law) needs no batching: its
``num`` i.i.d. draws are one draw of sample shape ``(num,)``, exact for every NumPyro
distribution (``sample_iid``).
"""

from __future__ import annotations

import jax
import numpyro.distributions as dist
from numpyro.distributions.batch_util import promote_batch_shape

from particlekit import kernels, prng

__all__ = ["BATCHABLE", "batched_law", "sample_iid", "sample_population"]

#: per-particle laws drawn as one batch (``Independent`` wrappers of them too)
BATCHABLE = (dist.Normal, dist.MultivariateNormal)


def _batchable(d) -> bool:
    if isinstance(d, dist.Independent):
        return _batchable(d.base_dist)
    return type(d) in BATCHABLE


def batched_law(law_fn, xs, num: int):
    """``law_fn(x)`` for every particle of ``xs`` (leading axis ``num``) as one NumPyro
    distribution of batch shape ``(num,)``, or None when the law is not in ``BATCHABLE``
    or its batched form does not come out with that batch shape (decided while tracing).

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro.distributions as dist
    >>> d = batched_law(lambda x: dist.Normal(0.9 * x, 1.0), jnp.arange(3.0), 3)
    >>> d.batch_shape, [round(v, 4) for v in d.loc.tolist()]
    ((3,), [0.0, 0.9, 1.8])
    >>> batched_law(lambda x: dist.Gamma(1.0 + x * x, 1.0), jnp.arange(3.0), 3) is None
    True
    """
    one = law_fn(jax.tree.map(lambda a: a[0], xs))  # (traced: only its type and shapes used)
    if not _batchable(one) or one.batch_shape != ():
        return None
    batched = promote_batch_shape(jax.vmap(law_fn)(xs))
    if batched.batch_shape != (num,) or batched.event_shape != one.event_shape:
        return None
    return batched


def sample_population(key, law_fn, xs, num: int, batch_size: int | None = None):
    """``x'_i ~ law_fn(xs[i])`` for the ``num`` particles of ``xs``: one draw of the batched
    law (``batched_law``) with ``key``, or, for a law that cannot be batched, one draw per
    particle with ``prng.particle_keys(key, num)`` (the keys of ``kernels.move``), then
    ``batch_size`` particles at a time if given (``kernels.per_particle``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
    >>> x = sample_population(jax.random.key(0), lambda x: dist.Normal(x, 1.0), jnp.zeros(4), 4)
    >>> bool((x == dist.Normal(jnp.zeros(4), 1.0).sample(jax.random.key(0))).all())
    True
    """
    batched = batched_law(law_fn, xs, num)
    if batched is not None:
        return batched.sample(key)
    draw = kernels.per_particle(lambda k, x, _: law_fn(x).sample(k), batch_size)
    return prng.call_with_keys(lambda ks: draw(ks, xs, None), prng.particle_keys(key, num))


def sample_iid(key, law, num: int):
    """``num`` i.i.d. draws of ``law`` (a NumPyro distribution of one particle with no
    per-particle parameters, e.g. a state-space model's initial law, vectorized model or
    not) as one draw of sample shape ``(num,)``: the same law as ``num`` per-particle
    keys, for any distribution, with one hash per draw instead of two. Meant for a draw
    made once, outside the time loop: it uses ``jax.random``'s rolled hash
    (``prng.rolled_key``), and the draw is computed once into memory on CPU
    (``prng.in_memory``): fused, the hash and the law's transform (a normal's inverse error
    function) were compiled and run again in each of the fusions reading the draw (four on
    the bootstrap filter; together 30 % of its compiled program).

    Examples
    --------
    >>> import jax, numpyro.distributions as dist
    >>> sample_iid(jax.random.key(0), dist.Gamma(2.0, 1.0), 5).shape
    (5,)
    """
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    words = jax.random.key_data(key) if typed else key
    return prng.in_memory(lambda k: law.sample(prng.rolled_key(k), (num,)), words, key)
