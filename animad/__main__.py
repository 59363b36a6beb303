from animad.cli import main

if __name__ == "__main__":  # multi-GPU ranks are spawned processes: importing this must not run the CLI
    raise SystemExit(main())
