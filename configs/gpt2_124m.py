# The paper's comparison: GPT-2 124M on 2.5B FineWeb-Edu tokens (the build-nanogpt recipe: batch 2**19 tokens,
# lr 6e-4 -> 6e-5 cosine after 715 warmup steps, 4,768 steps, AdamW betas 0.9/0.95, weight decay 0.1, clip 1.0).
#   python prepare_fineweb.py --source fineweb-edu --max_tokens 2.5e9      # -> data/fineweb-edu
#   bash scripts/compare.sh configs/gpt2_124m.py --nproc 8
data_dir = "data/fineweb-edu"
out_dir = "runs/gpt2_124m"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
batch_size = 64  # micro-batch per GPU (fits an 80 GB card in bf16); grad accum fills the rest
total_batch_size = 524288  # 2**19 tokens per optimizer step
learning_rate = 6e-4
min_lr = 6e-5
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
