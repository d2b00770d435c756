"""Zeus network components: image encoders with a neck to the decoder width, and SAM's mask decoder prompted by
instruction embeddings (segment_anything's own modules, batched correctly)."""
from nnunet_mulmod.zeus.modeling.decoder import InstructionMaskDecoder
from nnunet_mulmod.zeus.modeling.image_encoders import (SAM_VIT_VARIANTS, SamViTFeatureEncoder, UNetFeatureEncoder,
                                                        ZeusCheckpointError, load_sam_image_encoder_weights)

__all__ = ["InstructionMaskDecoder", "SAM_VIT_VARIANTS", "SamViTFeatureEncoder", "UNetFeatureEncoder",
           "ZeusCheckpointError", "load_sam_image_encoder_weights"]
