"""Applications of the sampler (inpaint, outpaint, retarget, ...): each module checks its inputs and
builds a `sample.hooks.Hooks`; the sampler never knows which application it runs."""
