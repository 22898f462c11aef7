# Run by every pooled python3 kernel before it is handed out (see the README).
import matplotlib.pyplot

# Draw one figure so fonts and the inline backend are loaded before the first page.
_fig, _ax = matplotlib.pyplot.subplots()
_ax.plot([0, 1])
_fig.canvas.draw()
matplotlib.pyplot.close(_fig)
del _fig, _ax
