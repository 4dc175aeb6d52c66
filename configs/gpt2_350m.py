# GPT-2 medium (350M) on the same 2.5B FineWeb-Edu tokens: the scale question the paper leaves open.
# Same data, schedule and batch as gpt2_124m.py; GPT-3's learning rate for this size.
#   bash scripts/compare.sh configs/gpt2_350m.py --nproc 8
base = "gpt2_124m.py"
out_dir = "runs/gpt2_350m"
n_layer = 24
n_head = 16
n_embd = 1024
batch_size = 32  # micro-batch per GPU (80 GB, bf16)
learning_rate = 3e-4
min_lr = 3e-5
