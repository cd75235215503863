"""diffusers `config.json` files of known VAEs (no weights), for loading a single weights file offline:
`sidpipe run --codec vae --vae ae.safetensors --vae-config flux`."""
