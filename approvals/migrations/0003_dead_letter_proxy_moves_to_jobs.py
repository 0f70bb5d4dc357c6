from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0002_review_console"),
        ("jobs", "0003_examples_app_and_dead_letter_proxy"),
    ]

    operations = [
        migrations.DeleteModel(name="DeadLetteredJob"),
    ]
