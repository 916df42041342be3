"""SimSiam as another package ships it: a method found through the `orl_bench.methods` entry point."""
