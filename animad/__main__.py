from animad.cli import main

raise SystemExit(main())
