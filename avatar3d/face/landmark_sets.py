"""Named MediaPipe face-mesh landmark index sets: the one place these numbers are written.

Why here: the face model, the generator, prep, the NeRF regions and the evaluators all name the
same lips, eyes and brows; a list written twice drifts.  Left/right are the subject's: "left" is
on +x in canonical space (image right).  Contours run from one corner to the other so index k
pairs across lids and lips.
"""
from __future__ import annotations

LIP_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIP_OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIP_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIP_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
INNER_LIP_PAIRS = tuple((LIP_INNER_UPPER[k], LIP_INNER_LOWER[k]) for k in (5, 4, 6, 3, 7))  # (13, 14), (82, 87), ...
"""(upper, lower) inner-lip landmarks facing each other across the middle of the mouth: the mouth opening."""
LIPS = sorted(set(LIP_OUTER_UPPER + LIP_OUTER_LOWER + LIP_INNER_UPPER + LIP_INNER_LOWER))  # == FACEMESH_LIPS
MOUTH_CORNERS_OUTER = (61, 291)  # (right, left)
MOUTH_CORNERS_INNER = (78, 308)

EYE_RIGHT_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]
EYE_RIGHT_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
EYE_LEFT_UPPER = [263, 466, 388, 387, 386, 385, 384, 398, 362]
EYE_LEFT_LOWER = [263, 249, 390, 373, 374, 380, 381, 382, 362]
EYE_OUTER_CORNERS = (33, 263)  # (right, left): the face-size normaliser

BROW_RIGHT = [70, 63, 105, 66, 107, 46, 53, 52, 65, 55]
BROW_LEFT = [300, 293, 334, 296, 336, 276, 283, 282, 295, 285]
BROW_INNER = [107, 66, 55, 65, 336, 296, 285, 295]

FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]  # == FACEMESH_FACE_OVAL

JAW = [146, 91, 181, 84, 17, 314, 405, 321, 375,  # the lower lip without its corners
       397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172]  # the chin and jaw line (face oval)

FOREHEAD = 10  # upper forehead, on the midline
CHIN = 152
SUBNASALE = 2  # nose base, on the midline
CHEEKS = (205, 425)  # (right, left) cheek centres, lateral to the nostrils

# Symmetric pairs (right, left) used to find the face's left-right axis.
SYMMETRIC_PAIRS = [(33, 263), (133, 362), (234, 454), (61, 291), (70, 300), (105, 334), (127, 356),
                   (93, 323), (58, 288), (172, 397), (136, 365), (159, 386), (145, 374), (50, 280), (48, 278)]


def loop(upper: list[int], lower: list[int]) -> list[int]:
    """A closed contour from two corner-to-corner halves sharing their end points."""
    return upper + lower[-2:0:-1]
