# The paper's comparison: GPT-2 medium (350M) on 2.5B FineWeb-Edu tokens (build-nanogpt recipe, DESIGN §5).
# The scale question the paper leaves open: same data, schedule and batch as gpt2_124m.py, a larger shape.
#   python prepare_fineweb.py --source fineweb-edu --max_tokens 2.5e9      # -> data/fineweb-edu
#   bash scripts/compare.sh configs/gpt2_350m.py --nproc 8
data_dir = "data/fineweb-edu"
out_dir = "runs/gpt2_350m"
n_layer = 24
n_head = 16
n_embd = 1024
block_size = 1024
batch_size = 32  # micro-batch per GPU (80 GB, bf16)
total_batch_size = 524288  # 2**19 tokens per optimizer step
learning_rate = 3e-4  # GPT-3 table for this size
min_lr = 3e-5
warmup_steps = 715
max_steps = 4768  # 4768 x 524288 = 2.5B tokens
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 250
val_tokens = 10485760
log_interval = 10
norm_interval = 50
ckpt_interval = 500
