"""python -m gradfit"""

from gradfit.cli import main

if __name__ == "__main__":
    main()
