"""The layer under every operator: data loop and batch weights, losses and their output
Hessians, parameter layout, change watching, seeds, options, input checks and errors."""
