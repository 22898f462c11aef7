# Run by every pooled python3 kernel before it is handed out (see the README):
# the imports of dashboard.ipynb, so that a page does not pay for them.
import matplotlib.pyplot
import numpy  # noqa: F401  (imported for the dashboard)
import pandas
import scipy.signal  # noqa: F401

# First calls load more (fonts, the PNG writer, pandas' describe): make them here, once.
_fig, _ax = matplotlib.pyplot.subplots()
_ax.plot([0, 1])
_fig.savefig(__import__("io").BytesIO(), format="png")
matplotlib.pyplot.close(_fig)
pandas.DataFrame({"x": [0.0, 1.0]}).describe()
del _fig, _ax
