"""Real BPF objects through the bpf(2) system call."""
