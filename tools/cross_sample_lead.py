"""Samples a trained joint-schedule LADD binsaw model along another latent path
(`latent.lead`), to separate the sampler path's effect from training's
(experiments/results/binsaw_steps.md, second part):

  python tools/cross_sample_lead.py --workdir=DIR/co_ladd_joint_lead0 --lead=0.5 --steps=2,4
"""

import argparse

from ladd.diffusion.sampling import SamplerSettings
from ladd.generate import compiled_sampler, sample
from ladd.job import load_trained


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--lead", type=float, required=True, help="latent.lead of the sampling path")
  parser.add_argument("--steps", default="2,4", help="token steps N, comma-separated")
  parser.add_argument("--num_samples", type=int, default=32)
  parser.add_argument("--seed", type=int, default=1)
  args = parser.parse_args()
  job, _, params, state = load_trained(args.workdir)
  trained = job.method.lat.lead
  job.method.lat.lead = args.lead
  compiled_sampler.cache_clear()  # cached per method object: a changed path needs a fresh trace
  for n in (int(s) for s in args.steps.split(",")):
    tokens, nfe = sample(job, params, state, SamplerSettings(steps=n), args.num_samples, args.num_samples, seed=args.seed)
    nll = float((-job.dataset.exact.log_prob(tokens)).mean())
    print(f"trained lead={trained:g} sampled lead={args.lead:g}: N={n} NFE={nfe:g} true NLL {nll:.1f}", flush=True)


if __name__ == "__main__":
  main()
