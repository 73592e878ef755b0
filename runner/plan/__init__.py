"""Stage 2: Recipe -> Plan, pure and torch-free: the task and method tables, the rules for what each machine
decides, topology and batch arithmetic, refusals, parameter and memory estimates."""
