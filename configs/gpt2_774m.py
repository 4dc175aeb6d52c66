# GPT-2 large (774M) on the same 2.5B FineWeb-Edu tokens: the scale question the paper leaves open.
# Same data, schedule and batch as gpt2_124m.py; GPT-3's learning rate for this size.
#   bash scripts/compare.sh configs/gpt2_774m.py --nproc 8
base = "gpt2_124m.py"
out_dir = "runs/gpt2_774m"
n_layer = 36
n_head = 20
n_embd = 1280
batch_size = 16  # micro-batch per GPU (80 GB, bf16)
learning_rate = 2.5e-4
min_lr = 2.5e-5
