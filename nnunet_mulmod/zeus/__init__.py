"""Zeus (zero-shot LLM instructions for union segmentation of aligned modalities) for nnU-Net v2.

instructions.py       instruction generation (template / json / hf causal LM / vlm) + nnunet_mulmod_zeus_instructions
text_encoder.py       MedCLIP-style encoder, chunking of long instructions, dispatch to nnunet_mulmod.text.encoders
instruction_table.py  instruction-embedding table file + nnunet_mulmod_zeus_embed
modeling/             image encoders (U-Net stage + neck, frozen SAM ViT) and the batched SAM mask decoder
network.py            ZeusNetwork (late / hybrid fusion) and its builder from the plans
trainer.py            nnUNetTrainerZeus (late), nnUNetTrainerZeusHybrid
See docs/zeus.md.
"""
