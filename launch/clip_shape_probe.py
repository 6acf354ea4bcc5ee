"""Does a CLIP's image embedding encode shape? A linear probe against zero-shot accuracy.

  python launch/clip_shape_probe.py shapestyle:clip [RUN ...]

Fits multinomial logistic regression (standardized features, L2 1e-3, Adam 500 steps) from the projected
image embeddings of 3000 named/plain-style renders to their shape, and reports its accuracy on 600 other
renders: a probe near the zero-shot accuracy means the image tower, not the text side, misses shape.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def probe_accuracy(train_x, train_y, test_x, test_y, classes: int, steps: int = 500) -> float:
  """Accuracy on (test_x [N, D], test_y [N]) of a softmax regression fit on (train_x, train_y)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
  x, xt = jnp.asarray((train_x - mu) / sd), (test_x - mu) / sd

  def loss(p):
    logp = jax.nn.log_softmax(x @ p[0] + p[1])
    return -jnp.mean(logp[jnp.arange(len(train_y)), train_y]) + 1e-3 * jnp.sum(p[0] ** 2)

  params = (jnp.zeros((x.shape[1], classes)), jnp.zeros(classes))
  opt = optax.adam(1e-2)
  state, grad = opt.init(params), jax.jit(jax.grad(loss))
  for _ in range(steps):
    updates, state = opt.update(grad(params), state)
    params = optax.apply_updates(params, updates)
  return float(np.mean(np.argmax(xt @ np.asarray(params[0]) + np.asarray(params[1]), 1) == test_y))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", help="CLIP workdirs or shipped names (shapestyle:clip)")
  args = ap.parse_args()
  from stylejax.data import shapestyle as ss
  from stylejax.eval import shapestyle_eval as E
  from stylejax.models.parts import load_clip_embedder
  sets = E.style_sets()
  styles = sets["named"] + sets["plain"]
  train_x, train_y, _ = E._examples(3000, styles, 11)
  test_x, test_y, _ = E._examples(600, styles, 12)
  for run in args.runs:
    emb = load_clip_embedder(run)
    acc = probe_accuracy(emb.embed_images(train_x), train_y["shape"], emb.embed_images(test_x), test_y["shape"],
                         len(ss.SHAPES))
    print(f"{run}: linear-probe shape accuracy {acc:.3f} (600 test renders, named + plain styles)", flush=True)


if __name__ == "__main__":
  main()
