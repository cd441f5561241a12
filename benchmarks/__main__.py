import sys

if sys.argv[1:2] == ["trl_sweep"]:  # the trl-tuned arm's grid (benchmarks/trl_sweep.py)
    from benchmarks.trl_sweep import main as sweep

    sweep(sys.argv[2:])
elif sys.argv[1:2] == ["sft_profile"]:  # torch.profiler on our SFT step (benchmarks/sft_profile.py)
    from benchmarks.sft_profile import main as profile

    profile(sys.argv[2:])
else:
    from benchmarks.harness import main

    main()
