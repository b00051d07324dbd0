"""Where objects are, in blocks: the vectorised box -> block mask the server's drift test uses
equals a box-by-box reference, and it follows the block motion field."""

import numpy as np
import pytest

from fluxshard_kernels.blocks import BlockGrid
from fluxshard_kernels.salience import object_blocks


def _reference(boxes, grid, grow):
    bs, out = grid.block_size, np.zeros((grid.rows, grid.cols), bool)
    for x1, y1, x2, y2 in boxes:
        r0, r1 = max(0, int(y1 // bs) - grow), min(grid.rows, int(np.ceil(y2 / bs)) + grow)
        c0, c1 = max(0, int(x1 // bs) - grow), min(grid.cols, int(np.ceil(x2 / bs)) + grow)
        out[r0:r1, c0:c1] = True
    return out.reshape(-1)


@pytest.mark.parametrize('grow', [0, 1, 2])
def test_object_blocks_equal_a_box_by_box_reference(grow):
    rng = np.random.default_rng(grow)
    grid = BlockGrid(480, 854, 16)
    xy = rng.uniform(-40, 900, (300, 2))
    wh = rng.uniform(1, 200, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    assert np.array_equal(object_blocks(boxes, grid, None, grow), _reference(boxes, grid, grow))
    assert not object_blocks(np.zeros((0, 4), np.float32), grid).any()


def test_object_blocks_follow_the_motion_field():
    """A block's content comes from block + mv: content moving 4 blocks right (mv -64 px)
    moves the object's blocks 4 columns right; half a block of motion covers both."""
    grid = BlockGrid(480, 854, 16)
    box = np.array([[100, 100, 140, 150]], np.float32)  # blocks rows 6-9, cols 6-8
    still = object_blocks(box, grid, None, 0).reshape(grid.rows, grid.cols)
    mv = np.zeros((grid.rows, grid.cols, 2), np.float32)
    mv[..., 0] = -64
    moved = object_blocks(box, grid, mv, 0).reshape(grid.rows, grid.cols)
    assert np.array_equal(moved[:, 4:], still[:, :-4]) and not moved[:, :4].any()
    mv[..., 0] = -8
    half = object_blocks(box, grid, mv, 0).reshape(grid.rows, grid.cols)
    assert np.array_equal(np.flatnonzero(half.any(0)), [6, 7, 8, 9])
