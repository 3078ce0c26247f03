"""CelebA's 40 attribute columns, in the order of `list_attr_celeba.txt`, and the ones
SynthFaces renders.

Shared by the data layer (reading/writing attribute files, captions), the judge and the app's
attribute checkboxes, so it sits at the root of the package rather than inside `data/`.
"""

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
    "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
NUM_ATTRIBUTES = len(CELEBA_ATTRIBUTES)  # 40
ATTRIBUTE_INDEX: dict[str, int] = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}

# Attributes the SynthFaces renderer (`t2i.data.synthfaces`) draws; every other column is always
# -1. Chosen to stay clearly visible at 64x64 (see docs/data.md for the frequencies they are
# sampled at). Here, not beside the renderer, because captions and eval read it too.
RENDERED_ATTRIBUTES: tuple[str, ...] = (
    "Male", "Young", "Smiling", "Mouth_Slightly_Open", "Eyeglasses",
    "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Bald",
    "Bangs", "Wavy_Hair", "Mustache", "No_Beard", "Wearing_Hat",
    "Wearing_Lipstick", "Pale_Skin", "Wearing_Earrings", "Wearing_Necklace", "Rosy_Cheeks",
    "Chubby",
)
